package relay

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/outbox"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// stack is what a relay test runs on: a JetStream server of its own, the
// machine's Redis under a prefix of its own, a session store whose outbox
// publisher runs, and the signing key the API would share.
type stack struct {
	nats  *testenv.NATS
	nc    *nats.Conn
	js    jetstream.JetStream
	names events.Names
	store *session.Store
	key   realtime.Key
}

func newStack(t testing.TB) *stack {
	t.Helper()
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	names := testenv.Names()
	ctx := context.Background()
	if _, err := events.Ensure(ctx, js, names, 1); err != nil {
		t.Fatal(err)
	}
	rdb, prefix := testenv.Redis(t)
	// The cap is lifted so benchmarks can add many photos to one session.
	store := session.NewStore(rdb, session.Options{Prefix: prefix, Names: names, MaxImages: 1 << 20})
	log, _ := testenv.Logger(t)
	pctx, cancel := context.WithCancel(ctx)
	pub, err := outbox.New(rdb, nc, store.Keys.Outbox(), "test", log, outbox.Options{Block: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = pub.Run(pctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &stack{nats: n, nc: nc, js: js, names: names, store: store, key: realtime.Key{Name: "local", Secret: "test-secret-" + testenv.ID()}}
}

// config is an SSE-mode relay on any free ports.
func (s *stack) config() Config {
	return Config{
		Common:   config.Common{NATSURL: s.nats.URL, Names: s.names, Replicas: 1, OpsAddr: "127.0.0.1:0", LogLevel: "info"},
		Realtime: realtime.Settings{Mode: realtime.ModeSSE, Key: s.key},
		Addr:     "127.0.0.1:0",
	}
}

// running is a relay started by a test.
type running struct {
	sse, ops string
	reg      *prometheus.Registry
	logs     *testenv.Logs
	stop     func()
}

// start runs a relay until the test ends (or stop), and waits until it is
// ready.
func (s *stack) start(t testing.TB, cfg Config) *running {
	t.Helper()
	var mu sync.Mutex
	addrs := map[string]string{}
	cfg.Listening = func(name, addr string) { mu.Lock(); addrs[name] = addr; mu.Unlock() }
	log, logs := testenv.Logger(t)
	cfg.Logger = log
	cfg.Registry = prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	get := func(name string) string { mu.Lock(); defer mu.Unlock(); return addrs[name] }
	testenv.Eventually(t, 10*time.Second, "relay listening", func() bool {
		return get("ops") != "" && (cfg.Realtime.Mode == realtime.ModeAbly || get("sse") != "")
	})
	r := &running{sse: get("sse"), ops: get("ops"), reg: cfg.Registry, logs: logs, stop: stop}
	testenv.Eventually(t, 10*time.Second, "relay ready", func() bool {
		resp, err := http.Get("http://" + r.ops + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return r
}

// metric is the value of a counter or gauge (summed over labels).
func (r *running) metric(t testing.TB, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += value(m)
		}
	}
	return total
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// sessionFor starts userID's capture session (a session-started event).
func (s *stack) sessionFor(t testing.TB, userID string) {
	t.Helper()
	_, err := s.store.Start(context.Background(), session.StartParams{
		UserID: userID, PatientID: "p-" + userID, EncounterID: "enc-1", Token: "tok-" + testenv.ID(), SessionID: "s-" + testenv.ID(),
	})
	if err != nil {
		t.Fatalf("start session: %v", err)
	}
}

// addImage records a photo (an image-uploaded event).
func (s *stack) addImage(t testing.TB, userID, imageID string) {
	t.Helper()
	img := session.Image{ID: imageID, S3Key: "temp/" + userID + "/" + imageID + ".jpg", Uploaded: true, Source: "mobile",
		ContentType: "image/jpeg", Size: 1000, CapturedAt: time.Now().UTC(),
		S3URL: "https://bucket.s3.example/temp/x.jpg?X-Amz-Signature=secret"}
	if _, _, err := s.store.AddImage(context.Background(), userID, "", img); err != nil {
		t.Fatalf("add image: %v", err)
	}
}

// token is userID's browser token, as the API would issue it.
func (s *stack) token(t testing.TB, userID string, ttl time.Duration) string {
	t.Helper()
	tok, _, err := realtime.Mint(s.key, userID, ttl, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// received is one SSE message as a subscriber saw it.
type received struct {
	SeqID   string
	EventID string
	Name    string
	Channel string
	ImageID string
}

func parseReceived(ev realtime.Event) (received, error) {
	m, err := ev.Message()
	if err != nil {
		return received{}, err
	}
	var d struct {
		ImageID string `json:"imageId"`
		Image   struct {
			ID string `json:"id"`
		} `json:"image"`
	}
	if err := m.DecodeData(&d); err != nil {
		return received{}, fmt.Errorf("data of %s: %w", m.Name, err)
	}
	id := d.ImageID
	if id == "" {
		id = d.Image.ID
	}
	return received{SeqID: ev.ID, EventID: m.ID, Name: m.Name, Channel: m.Channel, ImageID: id}, nil
}

// sub is an SSE subscriber that records what it receives.
type sub struct {
	resp *http.Response

	mu   sync.Mutex
	got  []received
	errs []string
	end  chan struct{}
}

// open subscribes to userID's channel on a relay; lastEvent, if set, goes in
// the Last-Event-ID header.
func open(t testing.TB, client *http.Client, sseAddr, userID, token, lastEvent string) *sub {
	t.Helper()
	req, _ := http.NewRequest("GET", realtime.SubscribeURL("http://"+sseAddr+SSE, realtime.Channel(userID), token, ""), nil)
	if lastEvent != "" {
		req.Header.Set("Last-Event-ID", lastEvent)
	}
	return openRequest(t, client, req)
}

// openRequest subscribes with a request of the test's making.
func openRequest(t testing.TB, client *http.Client, req *http.Request) *sub {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("subscribe: %d %s", resp.StatusCode, b)
	}
	s := &sub{resp: resp, end: make(chan struct{})}
	go func() {
		defer close(s.end)
		r := realtime.NewReader(resp.Body)
		for {
			ev, err := r.Next()
			if err != nil {
				return
			}
			if ev.Event != "message" {
				s.mu.Lock()
				s.errs = append(s.errs, ev.Event+" "+ev.Data)
				s.mu.Unlock()
				continue
			}
			rc, err := parseReceived(ev)
			s.mu.Lock()
			if err != nil {
				s.errs = append(s.errs, err.Error())
			} else {
				s.got = append(s.got, rc)
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *sub) close() { s.resp.Body.Close(); <-s.end }

func (s *sub) received() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.got...)
}

func (s *sub) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// storedEvents reads every event of the stream in order (what the relay
// must deliver), keeping the browser-facing ones.
func (s *stack) storedEvents(t testing.TB) []events.Event {
	t.Helper()
	ctx := context.Background()
	st, err := s.js.Stream(ctx, s.names.Stream)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Event
	for seq := uint64(1); ; {
		raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(s.names.All()))
		if err != nil {
			break
		}
		ev, err := events.Decode(raw.Data)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type.BrowserName() != "" {
			out = append(out, ev)
		}
		seq = raw.Sequence + 1
	}
	return out
}

func userOf(channel string) string { return strings.TrimPrefix(channel, realtime.ChannelPrefix) }
