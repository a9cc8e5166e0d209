package consume

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// env is a JetStream server of the test's own with the event stream, the
// dead-letter stream and the thumbnailer's consumer.
type env struct {
	js    jetstream.JetStream
	names events.Names
	cons  jetstream.Consumer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	_, js, names := testenv.Streams(t)
	cons, err := events.EnsureConsumer(context.Background(), js, names, events.Consumer{Name: events.ConsumerThumbnailer, Type: events.ImageUploaded, AckWait: time.Minute, MaxDeliver: 10})
	if err != nil {
		t.Fatal(err)
	}
	return &env{js: js, names: names, cons: cons}
}

// publish stores one image.uploaded event for user and returns its id.
func (e *env) publish(t *testing.T, user string) string {
	t.Helper()
	ev, err := events.New("/test", events.ImageUploaded, user, map[string]string{"imageId": "img"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Publish(context.Background(), e.js, e.names, ev); err != nil {
		t.Fatal(err)
	}
	return ev.ID
}

// run consumes with h until stop is called; stop returns once Run did.
func (e *env) run(t *testing.T, h Handler, opt Options) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, e.cons, h, opt) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
}

// Shutdown: a handler that finishes within the grace period is acked; one
// that does not has its context ended and its message handed back, so the
// next process gets it at once (not after AckWait), and nothing else.
func TestShutdownFinishesOrHandsBack(t *testing.T) {
	e := newEnv(t)
	quick, slow := e.publish(t, "quick"), e.publish(t, "slow")
	started := make(chan string, 2)
	release := make(chan struct{})
	var outcomes sync.Map
	stop := e.run(t, func(ctx context.Context, ev events.Event) error {
		started <- ev.ID
		if ev.ID == quick {
			<-release // finishes once the stop has begun
			return nil
		}
		<-ctx.Done() // never finishes by itself
		return ctx.Err()
	}, Options{Workers: 2, Grace: 300 * time.Millisecond, OnResult: func(t events.Type, o string) { outcomes.Store(o, true) }})
	<-started
	<-started
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	close(release)
	<-stopped
	if _, ok := outcomes.Load("handed_back"); !ok {
		t.Errorf("nothing handed back")
	}

	got := make(chan events.Event, 4)
	stop = e.run(t, func(ctx context.Context, ev events.Event) error { got <- ev; return nil }, Options{})
	defer stop()
	select {
	case ev := <-got:
		if ev.ID != slow {
			t.Errorf("redelivered %s, want the unfinished %s", ev.ID, slow)
		}
	case <-time.After(10 * time.Second): // AckWait is 1 min: a hand-back comes at once
		t.Fatal("the unfinished message did not come back")
	}
	info, err := e.cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "everything acked", func() bool {
		info, err = e.cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	if len(got) != 0 {
		t.Errorf("more came back: %v", <-got)
	}
}

// A message the handler refuses for good is kept on the dead-letter stream
// with why, the service's own step runs once, and a replay brings it back
// to the consumer, which now handles it.
func TestDeadLettersAreKeptAndReplayed(t *testing.T) {
	e := newEnv(t)
	id := e.publish(t, "u1")
	store := deadletter.New(e.js, e.names)
	var mu sync.Mutex
	var gaveUp []string
	fixed := make(chan struct{})
	handled := make(chan string, 1)
	h := func(ctx context.Context, ev events.Event) error {
		select {
		case <-fixed:
			handled <- ev.ID
			return nil
		default:
			return Permanent(errors.New("not an image"))
		}
	}
	stop := e.run(t, h, Options{DeadLetters: store, DeadLetter: func(_ context.Context, ev events.Event, reason string) error {
		mu.Lock()
		defer mu.Unlock()
		gaveUp = append(gaveUp, ev.ID+" "+reason)
		return nil
	}})
	defer stop()
	var letters []deadletter.Letter
	testenv.Eventually(t, 10*time.Second, "a dead letter", func() bool {
		var err error
		letters, err = store.List(context.Background())
		return err == nil && len(letters) == 1
	})
	l := letters[0]
	got := []string{l.Consumer, l.Reason, l.Subject, l.EventID, l.EventType}
	want := []string{events.ConsumerThumbnailer, "permanent: not an image", e.names.Subject(events.ImageUploaded, "u1"), id, string(events.ImageUploaded)}
	if d := cmp.Diff(want, got); d != "" || l.EventSeq != 1 {
		t.Errorf("letter (-want +got):\n%s\nevent seq %d", d, l.EventSeq)
	}
	mu.Lock()
	if d := cmp.Diff([]string{id + " permanent: not an image"}, gaveUp); d != "" {
		t.Errorf("the service's step (-want +got):\n%s", d)
	}
	mu.Unlock()

	close(fixed)
	if _, err := store.Replay(context.Background(), l.Seq); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-handled:
		if got != id {
			t.Errorf("replayed %s, want %s", got, id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the replayed event never reached the consumer")
	}
	if letters, err := store.List(context.Background()); err != nil || len(letters) != 0 {
		t.Errorf("after replay: %v %v, want no dead letters", letters, err)
	}
}
