package audit_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/audit"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// interleave merges the sessions' events at random, each session's in
// its own order, as many sessions' requests reach the stream.
func interleave(rnd *rand.Rand, sessions [][]events.Event) []events.Event {
	next := make([]int, len(sessions))
	var out []events.Event
	for left := len(sessions); left > 0; {
		i := rnd.IntN(len(sessions))
		if next[i] == len(sessions[i]) {
			continue
		}
		out = append(out, sessions[i][next[i]])
		if next[i]++; next[i] == len(sessions[i]) {
			left--
		}
	}
	return out
}

// document is a session's document line by line, as written.
func document(t *testing.T, s3 *blob.Store, sessionID string) []audit.Record {
	t.Helper()
	body, _, _, err := s3.Open(context.Background(), audit.Key("u1", sessionID))
	if err != nil {
		t.Fatalf("%s: %v", sessionID, err)
	}
	defer body.Close()
	raw, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%s: line %q: %v", sessionID, line, err)
		}
		out = append(out, r)
	}
	return out
}

// writers runs audit consumers on one durable, each on a bucket of its
// own that fails writes as its seeded schedule says; it stops one and
// starts another, or moves the pin, at random.
type writers struct {
	t      *testing.T
	s3     *blob.Store
	js     jetstream.JetStream
	stream jetstream.Stream
	rnd    *rand.Rand
	failed int
	runs   []*run
}

type run struct {
	stop   context.CancelFunc
	done   chan error
	bucket *flaky
}

func (ws *writers) start() {
	b := &flaky{Objects: ws.s3, rnd: rand.New(rand.NewPCG(ws.rnd.Uint64(), 7))}
	ctx, stop := context.WithCancel(context.Background())
	// A handle of its own, as each process has: the pin is the handle's.
	cons, err := ws.js.Consumer(ctx, ws.stream.CachedInfo().Config.Name, events.ConsumerAudit)
	if err != nil {
		ws.t.Fatal(err)
	}
	r := &run{stop: stop, done: make(chan error, 1), bucket: b}
	go func() {
		r.done <- audit.NewWriter(audit.NewStore(b), nil).Consume(ctx, ws.stream, cons,
			consume.Options{Backoff: func(uint64) time.Duration { return 5 * time.Millisecond }})
	}()
	ws.runs = append(ws.runs, r)
}

func (ws *writers) stopAt(i int) {
	r := ws.runs[i]
	r.stop()
	if err := <-r.done; err != nil {
		ws.t.Errorf("consume: %v", err)
	}
	r.bucket.mu.Lock()
	ws.failed += r.bucket.failed
	r.bucket.mu.Unlock()
	ws.runs = append(ws.runs[:i], ws.runs[i+1:]...)
}

// upset does one random thing to the writers: restart one, or move the pin.
func (ws *writers) upset(ctx context.Context) {
	if ws.rnd.IntN(2) == 0 {
		ws.stopAt(ws.rnd.IntN(len(ws.runs)))
		ws.start()
		return
	}
	_ = ws.stream.UnpinConsumer(ctx, events.ConsumerAudit, events.ConsumerAudit)
}

// trailServers are an S3 server and a stream of the test's own, with the
// audit consumer (AckWait 5 s) on it.
func trailServers(t *testing.T) (*blob.Store, jetstream.JetStream, events.Names, jetstream.Consumer, jetstream.Stream) {
	t.Helper()
	s3, _ := testenv.S3(t)
	_, js, names := testenv.Streams(t)
	ctx := context.Background()
	cons, err := events.EnsureConsumer(ctx, js, names, audit.Consumer(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, names.Stream)
	if err != nil {
		t.Fatal(err)
	}
	return s3, js, names, cons, stream
}

// Whatever the schedule (many sessions' events interleaved, writes failing
// before or after they land, events replayed under their ids, two writers
// at once, one stopped mid-batch and the pin moved), every session's
// document holds exactly its events' records, once each, in stream order.
func TestBatchWriterProperty(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 11))
	s3, js, names, cons, stream := trailServers(t)
	ctx := context.Background()
	var sessions [][]events.Event
	var ids []string
	for range 16 {
		ids = append(ids, "s-"+testenv.ID())
		sessions = append(sessions, sessionEvents(t, ids[len(ids)-1], 1+rnd.IntN(4)))
	}
	all := interleave(rnd, sessions)

	ws := &writers{t: t, s3: s3, js: js, stream: stream, rnd: rand.New(rand.NewPCG(seed, 13))}
	ws.start()
	ws.start()
	for i, ev := range all {
		if _, err := events.Publish(ctx, js, names, ev); err != nil {
			t.Fatal(err)
		}
		if rnd.IntN(8) == 0 { // an outbox replaying it beyond the stream's dedupe
			raw, _ := json.Marshal(ev)
			if _, err := events.PublishRaw(ctx, js, names.SubjectOf(ev), fmt.Sprintf("%s-again-%d", ev.ID, i), "", raw); err != nil {
				t.Fatal(err)
			}
		}
		if rnd.IntN(12) == 0 {
			ws.upset(ctx)
		}
	}
	testenv.Eventually(t, 60*time.Second, "every event acked", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	for len(ws.runs) > 0 {
		ws.stopAt(0)
	}
	for i, evs := range sessions {
		if diff := cmp.Diff(want(t, evs), document(t, s3, ids[i])); diff != "" {
			t.Errorf("session %s (-want +got), seed %d:\n%s", ids[i], seed, diff)
		}
	}
	t.Logf("%d events, %d writes failed", len(all), ws.failed)
}
