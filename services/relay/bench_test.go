package relay

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/pkg/testenv"
)

// BenchmarkSSE measures, at 100 and 1,000 SSE subscribers (two per session:
// a desktop and a phone), the latency from recording a photo in the session
// store (the API's AddImage: one Lua step writing the session and its
// outbox entry) through the outbox publisher, JetStream and the relay's hub
// to each of the session's two subscribers receiving the image-uploaded
// event. Next to it, in the same run and on the same NATS server, the raw
// JetStream latency from publish to an ordered consumer receiving it.
//
//	go test -run '^$' -bench BenchmarkSSE -benchtime 400x ./services/relay
//
// Reported per sub-benchmark: sse-p50-ms, sse-p99-ms, js-p50-ms, js-p99-ms.
func BenchmarkSSE(b *testing.B) {
	for _, n := range []int{100, 1000} {
		env := newBenchEnv(b, n)
		b.Run(fmt.Sprintf("subscribers=%d", n), env.run)
	}
}

type arrival struct {
	id string
	at time.Time
}

type benchEnv struct {
	s        *stack
	users    []string
	arrivals chan arrival
	next     atomic.Int64
	photos   map[string]int
	raw      *rawJS
}

func newBenchEnv(b *testing.B, subscribers int) *benchEnv {
	s := newStack(b)
	r := s.start(b, s.config())
	e := &benchEnv{s: s, arrivals: make(chan arrival, 4*subscribers), photos: map[string]int{}}
	client := streamingClient(b)
	var wg sync.WaitGroup
	for i := range subscribers / 2 {
		user := fmt.Sprintf("bench_%d_%04d", subscribers, i)
		e.users = append(e.users, user)
		s.sessionFor(b, user)
		tok := s.token(b, user, time.Hour)
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.subscribe(b, client, r.sse, user, tok)
			}()
		}
	}
	wg.Wait()
	testenv.Eventually(b, 30*time.Second, "subscribers connected", func() bool {
		return r.metric(b, "relay_sse_subscribers") == float64(subscribers)
	})
	e.raw = newRawJS(b, s)
	return e
}

// subscribe opens one stream whose image-uploaded events are timed as they
// are read.
func (e *benchEnv) subscribe(b *testing.B, client *http.Client, addr, user, tok string) {
	resp, err := client.Get(realtime.SubscribeURL("http://"+addr+SSE, realtime.Channel(user), tok, ""))
	if err != nil || resp.StatusCode != 200 {
		b.Errorf("subscribe: %v %v", err, resp)
		return
	}
	b.Cleanup(func() { resp.Body.Close() })
	go func() {
		rd := realtime.NewReader(resp.Body)
		for {
			ev, err := rd.Next()
			if err != nil {
				return
			}
			at := time.Now()
			rc, err := parseReceived(ev)
			if err != nil || rc.Name != "image-uploaded" {
				continue
			}
			e.arrivals <- arrival{rc.ImageID, at}
		}
	}()
}

func (e *benchEnv) run(b *testing.B) {
	ctx := context.Background()
	sse := make([]time.Duration, 0, 2*b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		user := e.users[i%len(e.users)]
		// Sessions stay small (at most 10 photos), so the figures compare
		// subscriber counts, not session sizes.
		if e.photos[user] == 10 {
			if _, err := e.s.store.Start(ctx, session.StartParams{UserID: user, PatientID: "p-" + testenv.ID(),
				EncounterID: "enc-1", Token: "tok-" + testenv.ID(), SessionID: "s-" + testenv.ID(), Discard: true}); err != nil {
				b.Fatal(err)
			}
			e.photos[user] = 0
		}
		e.photos[user]++
		id := fmt.Sprintf("img-%d", e.next.Add(1))
		img := session.Image{ID: id, S3Key: "temp/" + user + "/" + id + ".jpg", Uploaded: true, Source: "mobile",
			ContentType: "image/jpeg", Size: 1000, CapturedAt: time.Now().UTC()}
		start := time.Now()
		if _, _, err := e.s.store.AddImage(ctx, user, "", img); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < 2; {
			select {
			case a := <-e.arrivals:
				if a.id == id {
					sse = append(sse, a.at.Sub(start))
					got++
				}
			case <-time.After(10 * time.Second):
				b.Fatalf("event %s not delivered", id)
			}
		}
	}
	b.StopTimer()
	js := e.raw.measure(b, b.N)
	report(b, "sse", sse)
	report(b, "js", js)
}

func report(b *testing.B, prefix string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	q := func(p float64) float64 {
		return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(q(0.50), prefix+"-p50-ms")
	b.ReportMetric(q(0.99), prefix+"-p99-ms")
}

// rawJS is a stream of its own on the same server, read by an ordered
// consumer, to time publish -> consume without the rest of the pipeline.
type rawJS struct {
	js      jetstream.JetStream
	subject string
	got     chan time.Time
}

func newRawJS(b *testing.B, s *stack) *rawJS {
	ctx := context.Background()
	name := "RAW" + strings.ToUpper(testenv.ID())
	subject := strings.ToLower(name) + ".x"
	if _, err := s.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject},
		Storage: jetstream.FileStorage}); err != nil {
		b.Fatal(err)
	}
	cons, err := s.js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		b.Fatal(err)
	}
	r := &rawJS{js: s.js, subject: subject, got: make(chan time.Time, 16)}
	cc, err := cons.Consume(func(jetstream.Msg) { r.got <- time.Now() })
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cc.Stop)
	return r
}

func (r *rawJS) measure(b *testing.B, n int) []time.Duration {
	ctx := context.Background()
	out := make([]time.Duration, 0, n)
	payload := []byte(`{"specversion":"1.0","id":"x","type":"image.uploaded","subject":"u","data":{}}`)
	for range n {
		start := time.Now()
		if _, err := r.js.Publish(ctx, r.subject, payload); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-r.got:
			out = append(out, at.Sub(start))
		case <-time.After(10 * time.Second):
			b.Fatal("raw message not consumed")
		}
	}
	return out
}
