package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/config"
)

var discard = slog.New(slog.DiscardHandler)

// recorder notes the order things happen in.
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, s)
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// part runs until told to stop, then notes its name.
func (r *recorder) part(name string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		r.add(name)
		return nil
	}
}

// The written order: work stops first (all of it), then the flush, then
// the ops server, then the final steps in the order added; readiness says
// stopping from the start.
func TestGroupStopsInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		g := NewGroup(ctx, discard, time.Second)
		var r recorder
		g.Go(StageOps, "ops", r.part("ops"))
		g.Go(StageFlush, "outbox", r.part("outbox"))
		g.Go(StageWork, "http", r.part("work"))
		g.Go(StageWork, "consumer", r.part("work"))
		g.Finally("nats", func(context.Context) error { r.add("nats"); return nil })
		g.Finally("redis", func(context.Context) error { r.add("redis"); return nil })
		g.Ready(nil)
		if status, _ := g.Health().Ready(ctx); status != http.StatusOK {
			t.Fatalf("ready: %d", status)
		}
		cancel()
		if err := g.Wait(); err != nil {
			t.Fatalf("wait: %v", err)
		}
		if d := cmp.Diff([]string{"work", "work", "outbox", "ops", "nats", "redis"}, r.list()); d != "" {
			t.Errorf("stop order (-want +got):\n%s", d)
		}
		if status, body := g.Health().Ready(context.Background()); status != http.StatusServiceUnavailable || body["status"] != "stopping" {
			t.Errorf("after stop: %d %v", status, body)
		}
	})
}

// A part that returns by itself, with an error or without, stops the whole
// group, and Wait says which and why; the others still stop in order.
func TestGroupStopsWhenAPartReturns(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"error", errors.New("redis: connection refused"), "outbox: redis: connection refused"},
		{"nil", nil, "outbox: stopped by itself"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := NewGroup(context.Background(), discard, time.Second)
				var r recorder
				g.Go(StageWork, "consumer", r.part("consumer"))
				g.Go(StageFlush, "outbox", func(context.Context) error { return tt.err })
				g.Finally("nats", func(context.Context) error { r.add("nats"); return nil })
				err := g.Wait()
				if err == nil || err.Error() != tt.want {
					t.Errorf("err = %v, want %q", err, tt.want)
				}
				if d := cmp.Diff([]string{"consumer", "nats"}, r.list()); d != "" {
					t.Errorf("(-want +got):\n%s", d)
				}
			})
		})
	}
}

// A start-up step that cannot go on stops what was started and returns its
// error; one cut short by the stop itself is no error.
func TestGroupStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGroup(context.Background(), discard, time.Second)
		var r recorder
		g.Go(StageOps, "ops", r.part("ops"))
		err := g.Stop(errors.New("consumer committer: bad config"))
		if err == nil || !strings.Contains(err.Error(), "bad config") {
			t.Errorf("err = %v", err)
		}
		if d := cmp.Diff([]string{"ops"}, r.list()); d != "" {
			t.Errorf("(-want +got):\n%s", d)
		}

		ctx, cancel := context.WithCancel(context.Background())
		g = NewGroup(ctx, discard, time.Second)
		cancel()
		err = WaitFor(g.Context(), discard, "redis", func(context.Context) error { return errors.New("refused") })
		if err := g.Stop(err); err != nil {
			t.Errorf("a stop during start-up: %v, want nil", err)
		}
	})
}

// A part that ignores the stop does not hold the process for ever: after
// twice the grace period the group moves on and says so.
func TestGroupLeavesAStuckPartBehind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		g := NewGroup(ctx, discard, time.Second)
		stuck := make(chan struct{})
		g.Go(StageWork, "stuck", func(context.Context) error { <-stuck; return nil })
		ran := false
		g.Finally("nats", func(context.Context) error { ran = true; return nil })
		cancel()
		err := g.Wait()
		if err == nil || !strings.Contains(err.Error(), "did not stop") || !ran {
			t.Errorf("err = %v, final steps ran: %v", err, ran)
		}
		close(stuck)
	})
}

// Readiness: starting until Ready, then each check in parallel within its
// own timeout, so one hung dependency (a frozen Redis) neither delays the
// answer past CheckTimeout nor makes a healthy one look unavailable.
func TestHealthChecksInParallel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGroup(context.Background(), discard, time.Second)
		h := g.Health()
		status, body := h.Ready(context.Background())
		if status != http.StatusServiceUnavailable || body["status"] != "starting" {
			t.Errorf("before Ready: %d %v", status, body)
		}
		slow := func(ctx context.Context) error {
			t := time.NewTimer(time.Second)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		g.Ready(map[string]Check{
			"redis": func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, // frozen
			"s3":    slow,
			"nats":  slow,
			"jwks":  func(context.Context) error { return nil },
		})
		start := time.Now()
		status, body = h.Ready(context.Background())
		took := time.Since(start) // fake time: exact
		want := map[string]string{"status": "unavailable", "redis": "unavailable", "s3": "ok", "nats": "ok", "jwks": "ok"}
		if d := cmp.Diff(want, body); d != "" || status != http.StatusServiceUnavailable {
			t.Errorf("status %d (-want +got):\n%s", status, d)
		}
		if took != CheckTimeout {
			t.Errorf("answered after %s, want the one timeout %s", took, CheckTimeout)
		}
		g.Stop(nil)
	})
}

func TestUnavailable(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"refused", context.Background(), fmt.Errorf("get session: %w", refused), true},
		{"reset", context.Background(), syscall.ECONNRESET, true},
		{"dropped", context.Background(), io.EOF, true},
		{"timeout", context.Background(), fmt.Errorf("eval: %w", context.DeadlineExceeded), true},
		{"pool", context.Background(), redis.ErrPoolTimeout, true},
		{"loading", context.Background(), errors.New("LOADING Redis is loading the dataset in memory"), true},
		{"nats down", context.Background(), fmt.Errorf("publish: %w", nats.ErrNoResponders), true},
		{"the client left", done, fmt.Errorf("eval: %w", context.Canceled), false},
		{"the client's own deadline", done, refused, false},
		{"a refusal", context.Background(), errors.New("session not found"), false},
		{"nil", context.Background(), nil, false},
	}
	for _, tt := range tests {
		if got := Unavailable(tt.ctx, tt.err); got != tt.want {
			t.Errorf("%s: Unavailable = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Started before its dependencies, a service waits for each (not failing)
// and is connected once they come up: Redis here, on a port nothing
// listens on yet.
func TestConnectWaitsForDependencies(t *testing.T) {
	port := freePort(t)
	n := testenv.StartNATS(t)
	names := testenv.Names()
	c := config.Common{RedisURL: fmt.Sprintf("redis://127.0.0.1:%d/0", port), NATSURL: n.URL, Names: names, Replicas: 1}
	log, logs := testenv.Logger(t)
	g := NewGroup(context.Background(), log, time.Second)
	type result struct {
		nc  *nats.Conn
		rdb *redis.Client
		err error
	}
	done := make(chan result, 1)
	go func() {
		rdb, err := Redis(g.Context(), c.RedisURL, log)
		if err != nil {
			done <- result{err: err}
			return
		}
		nc, _, err := JetStream(g.Context(), c, "test", log)
		done <- result{nc, rdb, err}
	}()
	testenv.Eventually(t, 10*time.Second, "a logged wait for redis", func() bool {
		return slices.ContainsFunc(logs.Lines(), func(l string) bool { return strings.Contains(l, "ops.waiting_for_dependency") })
	})
	select {
	case r := <-done:
		t.Fatalf("connected with no Redis: %v", r.err)
	default:
	}
	srv := startRedis(t, port)
	defer srv()
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("not connected 30 s after Redis came up")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.rdb.Close()
	defer r.nc.Close()
	// The event stream and the dead-letter stream exist.
	if err := r.rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	_, js := n.Connect(t)
	for _, s := range []string{names.Stream, names.Stream + "_DLQ"} {
		if _, err := js.Stream(context.Background(), s); err != nil {
			t.Errorf("stream %s: %v", s, err)
		}
	}
	g.Stop(nil)
}

// Drain waits until NATS has closed: what was published just before is on
// the server, and the subscriptions have delivered what they held.
func TestDrainNATSWaitsForClose(t *testing.T) {
	n := testenv.StartNATS(t)
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 1000)
	sub, err := nc.Subscribe("t.x", func(m *nats.Msg) {
		time.Sleep(time.Millisecond) // a slow subscriber still gets everything
		got <- len(m.Data)
	})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := n.Connect(t)
	for i := range 200 {
		if err := other.Publish("t.x", []byte(strings.Repeat("x", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the messages in the subscriber's buffer", func() bool {
		n, _, _ := sub.Pending()
		return n+len(got) == 200
	})
	if err := DrainNATS(context.Background(), nc); err != nil {
		t.Fatal(err)
	}
	if !nc.IsClosed() || len(got) != 200 {
		t.Errorf("after drain: closed %v, %d of 200 delivered", nc.IsClosed(), len(got))
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRedis runs a redis-server of the test's own on port; the returned
// function stops it.
func startRedis(t *testing.T, port int) func() {
	t.Helper()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	return func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}
