package ops

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/pkg/config"
)

// serve runs a server with lim until the test ends and returns its address.
func serve(t *testing.T, lim Limits) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10)); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Server{Addr: "127.0.0.1:0", Handler: mux, Limits: lim, Ready: ready}.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return <-ready
}

// healthy reports whether GET /healthz answers 200 within a second, trying
// up to three times (one slow answer on a loaded machine is not the bug this
// looks for: a server that no longer answers at all is).
func healthy(addr string) error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last error
	for range 3 {
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
	}
	return last
}

// trickler is a hostile client that sends its request a byte at a time and
// notes when the server hangs up.
type trickler struct {
	conn   net.Conn
	closed chan struct{}
}

func trickle(t *testing.T, addr, head string) *trickler {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	tr := &trickler{conn: c, closed: make(chan struct{})}
	t.Cleanup(func() { c.Close() })
	go func() {
		// Whatever the server answers, a read ending means it hung up.
		defer close(tr.closed)
		_, _ = io.Copy(io.Discard, c)
	}()
	go func() {
		if _, err := io.WriteString(c, head); err != nil {
			return
		}
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tr.closed:
				return
			case <-tick.C:
				if _, err := c.Write([]byte("a")); err != nil {
					return
				}
			}
		}
	}()
	return tr
}

// Must show 2: hundreds of clients trickling their headers or bodies do
// not stop /healthz answering, and the server hangs up on each of them once
// its read timeout passes, so they cannot pile up.
func TestSlowClientsDoNotStarveTheServer(t *testing.T) {
	lim := DefaultLimits()
	lim.ReadHeaderTimeout, lim.ReadTimeout = time.Second, 2*time.Second
	addr := serve(t, lim)

	const bodies, headers = 300, 100
	var all []*trickler
	for i := range bodies + headers {
		head := "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
		if i >= bodies {
			head = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
		}
		all = append(all, trickle(t, addr, head))
	}
	for i := range 5 {
		if err := healthy(addr); err != nil {
			t.Fatalf("probe %d with %d trickling clients: /healthz did not answer: %v", i, len(all), err)
		}
	}
	var cut atomic.Int64
	var wg sync.WaitGroup
	for _, tr := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-tr.closed:
				cut.Add(1)
			case <-time.After(30 * time.Second):
			}
		}()
	}
	wg.Wait()
	if got := cut.Load(); got != int64(len(all)) {
		t.Fatalf("the server hung up on %d of %d trickling clients within 30 s (read timeouts %s/%s)", got, len(all), lim.ReadHeaderTimeout, lim.ReadTimeout)
	}
	if err := healthy(addr); err != nil {
		t.Fatalf("after the attack: %v", err)
	}
}

// Connections over the cap are answered 503 at once and closed, rather than
// queued; once the holders go, the server answers again.
func TestConnectionCap(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxConns = 20
	addr := serve(t, lim)
	var held []net.Conn
	for range lim.MaxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	for i := range 5 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.HasPrefix(line, "HTTP/1.1 503") {
			t.Fatalf("connection %d over the cap: %q %v", i, line, err)
		}
	}
	for _, c := range held {
		c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for healthy(addr) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the server did not answer again once the connections closed")
		}
	}
}

// A request whose headers are over the limit is refused (431), and the
// limits read from the environment are checked.
func TestHeaderLimitAndReadLimits(t *testing.T) {
	addr := serve(t, DefaultLimits())
	req, _ := http.NewRequest("GET", "http://"+addr+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 32<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("32 KiB of headers: %d", resp.StatusCode)
	}
}

func TestReadLimits(t *testing.T) {
	env := map[string]string{"HTTP_READ_TIMEOUT": "10s", "HTTP_MAX_CONNS": "5000"}
	r := config.New(func(k string) string { return env[k] })
	got := ReadLimits(r, DefaultLimits())
	want := DefaultLimits()
	want.ReadTimeout, want.MaxConns = 10*time.Second, 5000
	if got != want || r.Err() != nil {
		t.Fatalf("limits %+v (%v), want %+v", got, r.Err(), want)
	}
	bad := config.New(func(k string) string {
		return map[string]string{"HTTP_MAX_CONNS": "3", "HTTP_MAX_HEADER_BYTES": "10", "HTTP_IDLE_TIMEOUT": "0s"}[k]
	})
	ReadLimits(bad, DefaultLimits())
	for _, name := range []string{"HTTP_MAX_CONNS", "HTTP_MAX_HEADER_BYTES", "HTTP_IDLE_TIMEOUT"} {
		if bad.Err() == nil || !strings.Contains(bad.Err().Error(), name) {
			t.Errorf("no error names %s: %v", name, bad.Err())
		}
	}
}
