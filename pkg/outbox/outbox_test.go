package outbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

func streamCount(t *testing.T, js jetstream.JetStream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), events.DefaultNames.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

func record(t *testing.T, st *session.Store, n int) {
	t.Helper()
	ctx := context.Background()
	if _, err := st.Start(ctx, session.StartParams{UserID: "u1", PatientID: "p1", EncounterID: "e1", Token: "tok" + testenv.ID(), SessionID: "s1"}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		img := session.Image{ID: fmt.Sprintf("img-%d", i), S3Key: fmt.Sprintf("temp/u1/%d.jpg", i), ContentType: "image/jpeg"}
		if _, _, err := st.AddImage(ctx, "u1", "", img); err != nil {
			t.Fatal(err)
		}
	}
}

func newPublisher(t *testing.T, rdb redis.Cmdable, nc *nats.Conn, stream, name string, opt Options) *Publisher {
	t.Helper()
	log, _ := testenv.Logger(t)
	p, err := New(rdb, nc, stream, name, log, opt)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func run(ctx context.Context, p *Publisher) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	return func() { cancel(); wg.Wait() }
}

// Promise 2: photos recorded while no publisher runs are published when one
// starts, each exactly once.
func TestEveryRecordedPhotoIsPublishedOnce(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, nc, js := testenv.JetStream(t)
	st := session.NewStore(rdb, session.Options{Prefix: prefix})
	record(t, st, 20) // the publisher is down: the events wait in the outbox
	if got := streamCount(t, js, "clinimg.image.uploaded.u1"); got != 0 {
		t.Fatalf("%d events in the stream before any publisher ran", got)
	}
	// Batches of 8: the 21 entries take three, the last one short.
	stop := run(context.Background(), newPublisher(t, rdb, nc, st.Keys.Outbox(), "p1", Options{Batch: 8}))
	defer stop()
	testenv.Eventually(t, 10*time.Second, "20 events in the stream", func() bool {
		return streamCount(t, js, "clinimg.image.uploaded.u1") == 20
	})
	testenv.Eventually(t, 5*time.Second, "an empty outbox", func() bool {
		n, _ := Depth(context.Background(), rdb, st.Keys.Outbox())
		return n == 0
	})
	if got := streamCount(t, js, "clinimg.image.uploaded.u1"); got != 20 {
		t.Fatalf("%d image.uploaded events, want 20", got)
	}
}

// A publisher told to stop mid-way (its service shutting down) publishes
// what is left before Run returns.
func TestPublisherFlushesWhenStopped(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, nc, js := testenv.JetStream(t)
	st := session.NewStore(rdb, session.Options{Prefix: prefix})
	record(t, st, 5) // session.started and 5 image.uploaded: 6 entries

	ctx, stop := context.WithCancel(context.Background())
	p := newPublisher(t, rdb, nc, st.Keys.Outbox(), "p1", Options{Batch: 2, Window: 1})
	p.step = func(step string) bool {
		if step == "sent" {
			stop() // told to stop once the first batch is on its way
		}
		return true
	}
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := Depth(context.Background(), rdb, st.Keys.Outbox()); n != 0 {
		t.Errorf("%d entries left in the outbox after Run returned", n)
	}
	if got := streamCount(t, js, "clinimg.image.uploaded.u1"); got != 5 {
		t.Errorf("%d image.uploaded in the stream, want 5", got)
	}
}

// A publisher that dies after JetStream acked a batch but before it deleted
// it: the next publisher publishes that batch again and the stream keeps
// one copy of each.
func TestPublisherCrashAfterPublishLeavesNoDuplicate(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, nc, js := testenv.JetStream(t)
	st := session.NewStore(rdb, session.Options{Prefix: prefix})
	record(t, st, 5) // session.started and 5 image.uploaded: 6 entries

	p := newPublisher(t, rdb, nc, st.Keys.Outbox(), "p1", Options{Batch: 2, Window: 1})
	batches := 0
	died := make(chan struct{})
	p.step = func(step string) bool {
		if step != "acked" {
			return true
		}
		batches++
		if batches == 2 { // dies between the acks and the delete of entries 3 and 4
			close(died)
			return false
		}
		return true
	}
	stop := run(context.Background(), p)
	<-died
	stop()
	if n, _ := Depth(context.Background(), rdb, st.Keys.Outbox()); n != 4 {
		t.Fatalf("outbox depth %d after the crash, want 4 (the acked batch and the two never read)", n)
	}

	var dups int
	var mu sync.Mutex
	p2 := newPublisher(t, rdb, nc, st.Keys.Outbox(), "p1", Options{Batch: 2}) // same process name: it restarted
	p2.OnPublished = func(_ events.Type, dup bool) {
		mu.Lock()
		defer mu.Unlock()
		if dup {
			dups++
		}
	}
	stop2 := run(context.Background(), p2)
	defer stop2()
	testenv.Eventually(t, 10*time.Second, "an empty outbox", func() bool {
		n, _ := Depth(context.Background(), rdb, st.Keys.Outbox())
		return n == 0
	})
	if got := streamCount(t, js, "clinimg.image.uploaded.u1"); got != 5 {
		t.Fatalf("%d image.uploaded in the stream, want 5", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if dups != 2 {
		t.Fatalf("JetStream dropped %d duplicates, want exactly the 2 republished entries", dups)
	}
}

// A photo recorded while the batch before it waits to be settled (acked and
// deleted) is published at once, not after: the publisher keeps reading while
// batches are in flight. The first batch is held at its "acked" step; once the
// publisher has read the outbox again and found nothing, a photo is recorded,
// and it must reach the stream while that batch is still held. A publisher
// that waits for each batch to settle before it reads again never gets there.
func TestNewEntryIsNotHeldBehindABatchInFlight(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, nc, js := testenv.JetStream(t)
	st := session.NewStore(rdb, session.Options{Prefix: prefix})
	record(t, st, 1) // session.started and 1 image.uploaded: 2 entries, one batch

	spy := &readSpy{Client: rdb}
	p := newPublisher(t, spy, nc, st.Keys.Outbox(), "p1", Options{Block: time.Second})
	held, release := make(chan struct{}), make(chan struct{})
	var once, unheld sync.Once
	p.step = func(step string) bool {
		if step == "acked" {
			once.Do(func() { close(held); <-release })
		}
		return true
	}
	t.Cleanup(run(context.Background(), p))
	t.Cleanup(func() { unheld.Do(func() { close(release) }) }) // first: the stop waits for the batch
	<-held
	reads := spy.empty.Load()
	testenv.Eventually(t, 10*time.Second, "a read of new entries while the first batch is unsettled", func() bool {
		return spy.empty.Load() > reads
	})
	img := session.Image{ID: "img-late", S3Key: "temp/u1/late.jpg", ContentType: "image/jpeg"}
	if _, _, err := st.AddImage(context.Background(), "u1", "", img); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the later photo published while the first batch is unsettled", func() bool {
		return streamCount(t, js, "clinimg.image.uploaded.u1") == 2
	})
	unheld.Do(func() { close(release) })
	testenv.Eventually(t, 10*time.Second, "an empty outbox", func() bool {
		n, _ := Depth(context.Background(), rdb, st.Keys.Outbox())
		return n == 0
	})
	if got := streamCount(t, js, "clinimg.image.uploaded.u1"); got != 2 {
		t.Fatalf("%d image.uploaded in the stream, want 2", got)
	}
}

// readSpy is a Redis client that counts the reads of new entries that found
// nothing.
type readSpy struct {
	*redis.Client
	empty atomic.Int64
}

func (r *readSpy) XReadGroup(ctx context.Context, a *redis.XReadGroupArgs) *redis.XStreamSliceCmd {
	cmd := r.Client.XReadGroup(ctx, a)
	if a.Streams[len(a.Streams)-1] == ">" && errors.Is(cmd.Err(), redis.Nil) {
		r.empty.Add(1)
	}
	return cmd
}

// A publisher that died for good: another process claims its pending entries.
func TestStaleEntriesAreClaimedByAnotherPublisher(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, nc, js := testenv.JetStream(t)
	st := session.NewStore(rdb, session.Options{Prefix: prefix})
	record(t, st, 3)
	// "dead" reads the entries (they become its pending) and never acks.
	ctx := context.Background()
	dead := newPublisher(t, rdb, nc, st.Keys.Outbox(), "dead", Options{})
	if err := rdb.XGroupCreateMkStream(ctx, st.Keys.Outbox(), Group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	if msgs, err := dead.read(ctx, ">", 0); err != nil || len(msgs) != 4 {
		t.Fatalf("dead read %d: %v", len(msgs), err)
	}
	live := newPublisher(t, rdb, nc, st.Keys.Outbox(), "live", Options{ClaimIdle: 200 * time.Millisecond})
	stop := run(ctx, live)
	defer stop()
	testenv.Eventually(t, 10*time.Second, "the dead publisher's entries published", func() bool {
		return streamCount(t, js, "clinimg.image.uploaded.u1") == 3
	})
}

func TestMessageOfEntry(t *testing.T) {
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name, subject, event string
		wantType             events.Type
		wantTrace            string
	}{
		{"traced", "clinimg.image.uploaded.u1", `{"id":"x","traceparent":"` + tp + `","data":{}}`, events.ImageUploaded, tp},
		{"untraced", "t1a2.commit.succeeded.user_9", `{"id":"x","data":{"notes":"\"traceparent\":\"` + tp + `\""}}`, events.CommitSucceeded, ""},
		{"prefix with dots", "a.b.session.started.u-1", `{"traceparent":"00-bad"}`, events.SessionStarted, ""},
		{"unknown type", "clinimg.image.exploded.u1", `{}`, "", ""},
		{"no user", "clinimg.image.uploaded.", `{}`, "", ""},
		{"no prefix", "image.uploaded.u1", `{}`, "", ""},
		{"not an envelope", "clinimg.image.uploaded.u1", `nope`, "", ""},
	}
	log, _ := testenv.Logger(t)
	p := &Publisher{log: log}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msg, typ, ok := p.message(redis.XMessage{ID: "1-0", Values: map[string]any{"id": "ev1", "subject": tc.subject, "event": tc.event}})
			if typ != tc.wantType || ok != (tc.wantType != "") {
				t.Fatalf("type %q ok %v, want %q", typ, ok, tc.wantType)
			}
			if !ok {
				return
			}
			if got := msg.Header.Get("traceparent"); got != tc.wantTrace {
				t.Errorf("traceparent %q, want %q", got, tc.wantTrace)
			}
			if got := msg.Header.Get(jetstream.MsgIDHeader); got != "ev1" {
				t.Errorf("Nats-Msg-Id %q, want ev1", got)
			}
			if string(msg.Data) != tc.event || msg.Subject != tc.subject {
				t.Errorf("message %s %q, want the entry unchanged", msg.Subject, msg.Data)
			}
		})
	}
}
