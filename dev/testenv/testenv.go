// Package testenv gives integration tests their real servers: the machine's
// redis-server under a key prefix of their own, a nats-server process of
// their own, and an S3 server that checks signatures, in a process of its
// own. Nothing is skipped: a missing server fails the test.
//
// The servers it builds (nats-server, deploy/local's s3local and miniredis
// commands) come from the workspace (go.work), as `make test-go` runs, so
// that neither this package nor the modules whose tests use it link them.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// RedisURL is the machine's Redis (CLINIMG_TEST_REDIS_URL overrides).
func RedisURL() string {
	if u := os.Getenv("CLINIMG_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// Redis connects to the machine's redis-server and returns a key prefix that
// is this test's alone; the test's keys are deleted when it ends.
func Redis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	opt, err := redis.ParseURL(RedisURL())
	if err != nil {
		t.Fatalf("redis url: %v", err)
	}
	opt.PoolSize = 256
	rdb := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis-server at %s is not reachable (make test starts it): %v", RedisURL(), err)
	}
	prefix := "test:" + ID() + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		rdb.Close()
	})
	return rdb, prefix
}

// NATS is a JetStream server of the test's own: a real nats-server process
// (the version deploy/local's go.mod pins, built once per machine) with its
// store in a temporary directory and every acked message synced to disk. It
// runs out of process so the race detector watches our code, not the
// server's.
type NATS struct {
	URL  string
	dir  string
	conf string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartNATS starts a JetStream server that lives as long as t.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	return startNATS(t, "always")
}

// StartNATSUnsynced is StartNATS with the server's default sync_interval
// (stores are synced every 2 minutes, as a replicated cluster that relies
// on its replicas may run), for benchmarks that look past the disk's fsync
// rate.
func StartNATSUnsynced(t testing.TB) *NATS {
	t.Helper()
	return startNATS(t, "")
}

func startNATS(t testing.TB, sync string) *NATS {
	t.Helper()
	n, err := newNATS(t.TempDir(), sync)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// NewNATS starts a JetStream server storing its data under dir, for code
// with no testing.TB (a TestMain); the caller calls Close.
func NewNATS(dir string) (*NATS, error) { return newNATS(dir, "always") }

func newNATS(dir, sync string) (*NATS, error) {
	bin, err := natsServerBinary()
	if err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	n := &NATS{dir: dir}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		n.URL = fmt.Sprintf("nats://127.0.0.1:%d", port)
		n.conf = filepath.Join(dir, "nats.conf")
		conf := fmt.Sprintf("listen: 127.0.0.1:%d\njetstream {\n  store_dir: %q\n", port, filepath.Join(dir, "js"))
		if sync != "" {
			conf += "  sync_interval: " + sync + "\n"
		}
		conf += "}\n"
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			return nil, err
		}
		if err = n.start(bin); err == nil {
			return n, nil
		}
		if attempt == 3 {
			return nil, fmt.Errorf("nats-server: %w", err)
		}
	}
}

// Close stops the server.
func (n *NATS) Close() { n.stop() }

// Pid is the server process's id, for benchmarks that measure its CPU.
func (n *NATS) Pid() int { return n.cmd.Process.Pid }

func (n *NATS) start(bin string) error {
	n.cmd = exec.Command(bin, "-c", n.conf)
	n.cmd.Stdout, n.cmd.Stderr = io.Discard, io.Discard
	if err := n.cmd.Start(); err != nil {
		return err
	}
	n.done = make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-n.done:
			return errors.New("exited at start")
		default:
		}
		if nc, err := nats.Connect(n.URL, nats.Timeout(time.Second)); err == nil {
			nc.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.stop()
	return errors.New("not ready after 15s")
}

func (n *NATS) stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	interrupt(n.cmd, n.done)
}

var natsBin struct {
	once sync.Once
	path string
	err  error
}

// natsServerBinary builds the nats-server the workspace requires (deploy/local
// pins it), once per machine, into the temporary directory
// (CLINIMG_NATS_SERVER names another).
func natsServerBinary() (string, error) {
	if p := os.Getenv("CLINIMG_NATS_SERVER"); p != "" {
		return p, nil
	}
	natsBin.once.Do(func() {
		// The version the workspace's module graph selects names the cached build.
		v, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/nats-io/nats-server/v2").Output()
		if err != nil {
			natsBin.err = fmt.Errorf("find version: %w", err)
			return
		}
		path := filepath.Join(os.TempDir(), "clinimg-test-nats-server-"+strings.TrimSpace(string(v)))
		if _, err := os.Stat(path); err == nil {
			natsBin.path = path
			return
		}
		tmp := path + "." + ID()
		if out, err := exec.Command("go", "build", "-o", tmp, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
			natsBin.err = fmt.Errorf("build: %v: %s", err, out)
			return
		}
		natsBin.err = os.Rename(tmp, path)
		natsBin.path = path
	})
	return natsBin.path, natsBin.err
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Connect opens a client connection and JetStream context, closed with t.
func (n *NATS) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// Names returns stream names unique to one test, for tests that share a
// server.
func Names() events.Names {
	id := ID()
	return events.Names{Stream: "T" + strings.ToUpper(id), Prefix: "t" + id}
}

// JetStream starts a server of the test's own, connects, and creates the
// event stream under default names.
func JetStream(t testing.TB) (*NATS, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	n := StartNATS(t)
	nc, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := events.Ensure(ctx, js, events.DefaultNames, 1); err != nil {
		t.Fatal(err)
	}
	return n, nc, js
}

// Streams starts a server of the test's own, connects, and creates the
// event stream and the dead-letter stream under names of the test's own.
func Streams(t testing.TB) (*NATS, jetstream.JetStream, events.Names) {
	t.Helper()
	n := StartNATS(t)
	_, js := n.Connect(t)
	names := Names()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := events.Ensure(ctx, js, names, 1); err != nil {
		t.Fatal(err)
	}
	if err := deadletter.Ensure(ctx, js, names, 1); err != nil {
		t.Fatal(err)
	}
	return n, js, names
}

// S3 starts an S3 server that verifies SigV4 (the s3local command, a process
// of the test's own) and returns a store on a fresh bucket.
func S3(t testing.TB) (*blob.Store, *S3Server) {
	t.Helper()
	srv := StartS3(t)
	return bucket(t, srv.Config("clinimg-test")), srv
}

// bucket opens the store cfg names and makes its bucket.
func bucket(t testing.TB, cfg blob.Config) *blob.Store {
	t.Helper()
	ctx := context.Background()
	st, err := blob.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

// Logger writes JSON logs to the test's output, and keeps them for tests
// that inspect what was logged.
func Logger(t testing.TB) (*slog.Logger, *Logs) {
	l := &Logs{t: t}
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

// Logs is every line a test's logger wrote.
type Logs struct {
	mu    sync.Mutex
	t     testing.TB
	lines []string
}

var _ io.Writer = (*Logs)(nil)

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, string(p))
	return len(p), nil
}

// Lines returns what was logged so far.
func (l *Logs) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// ID is a random 64-bit hex string.
func ID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Eventually polls cond every 10 ms until it holds or d passes.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
