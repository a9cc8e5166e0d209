package outbox

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/pkg/testenv"
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
	_, _, js := testenv.JetStream(t)
	log, _ := testenv.Logger(t)
	st := session.NewStore(rdb, session.Options{Prefix: prefix})
	record(t, st, 20) // the publisher is down: the events wait in the outbox
	if got := streamCount(t, js, "clinimg.image.uploaded.u1"); got != 0 {
		t.Fatalf("%d events in the stream before any publisher ran", got)
	}
	stop := run(context.Background(), New(rdb, js, st.Keys.Outbox(), "p1", log))
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

// A publisher that dies after JetStream acked but before it deleted the
// entry: the next publisher publishes it again and the stream keeps one copy.
func TestPublisherCrashAfterPublishLeavesNoDuplicate(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, _, js := testenv.JetStream(t)
	log, _ := testenv.Logger(t)
	st := session.NewStore(rdb, session.Options{Prefix: prefix})
	record(t, st, 5)

	ctx, crash := context.WithCancel(context.Background())
	p := New(rdb, js, st.Keys.Outbox(), "p1", log)
	published := 0
	done := make(chan struct{})
	p.afterPublish = func(string) {
		published++
		if published == 3 {
			crash() // dies between the PubAck and the delete of the third entry
			close(done)
		}
	}
	stop := run(ctx, p)
	<-done
	stop()
	if n, _ := Depth(context.Background(), rdb, st.Keys.Outbox()); n == 0 {
		t.Fatal("the crashed publisher deleted everything; the test did not crash it mid-way")
	}

	var dups int
	var mu sync.Mutex
	p2 := New(rdb, js, st.Keys.Outbox(), "p1", log) // same process name: it restarted
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
	if dups != 1 {
		t.Fatalf("JetStream dropped %d duplicates, want exactly the 1 republished entry", dups)
	}
}

// A publisher that died for good: another process claims its pending entries.
func TestStaleEntriesAreClaimedByAnotherPublisher(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, _, js := testenv.JetStream(t)
	log, _ := testenv.Logger(t)
	st := session.NewStore(rdb, session.Options{Prefix: prefix})
	record(t, st, 3)
	// "dead" reads the entries (they become its pending) and never acks.
	ctx := context.Background()
	dead := New(rdb, js, st.Keys.Outbox(), "dead", log)
	if err := rdb.XGroupCreateMkStream(ctx, st.Keys.Outbox(), Group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	if msgs, err := dead.read(ctx, ">", 0); err != nil || len(msgs) != 4 {
		t.Fatalf("dead read %d: %v", len(msgs), err)
	}
	live := New(rdb, js, st.Keys.Outbox(), "live", log)
	live.ClaimIdle = 200 * time.Millisecond
	stop := run(ctx, live)
	defer stop()
	testenv.Eventually(t, 10*time.Second, "the dead publisher's entries published", func() bool {
		return streamCount(t, js, "clinimg.image.uploaded.u1") == 3
	})
}
