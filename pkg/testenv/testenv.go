// Package testenv gives integration tests their real servers: the machine's
// redis-server under a key prefix of their own, an embedded JetStream server
// of their own, and an S3 server that checks signatures. Nothing is skipped:
// a missing server fails the test.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/natsembed"
	"github.com/clinicalimages/clinimg/pkg/s3local"
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

// NATS is a JetStream server of the test's own, embedded, with its store in a
// temporary directory.
type NATS struct {
	Server *server.Server
	URL    string
	dir    string
	t      testing.TB
}

// StartNATS starts an embedded JetStream server that lives as long as t.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	dir := t.TempDir()
	s, err := natsembed.Start(-1, dir)
	if err != nil {
		t.Fatal(err)
	}
	n := &NATS{Server: s, URL: s.ClientURL(), dir: dir, t: t}
	t.Cleanup(func() { n.Server.Shutdown(); n.Server.WaitForShutdown() })
	return n
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

// S3 starts an S3 server that verifies SigV4 and returns a store on a fresh
// bucket.
func S3(t testing.TB) (*blob.Store, *s3local.Server) {
	t.Helper()
	srv, err := s3local.Start("127.0.0.1:0", "AKIATESTKEY", "test-secret-"+ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx := context.Background()
	st, err := blob.Open(ctx, srv.Config("clinimg-test"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	return st, srv
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
