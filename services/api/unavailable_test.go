package api

import (
	"net"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/devissuer"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Redis stopped: requests get 503 with the usual JSON body (and may be
// retried), not 500; Redis back: the same server answers again, no restart.
func TestRedisStoppedGives503AndRecovers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	redisServer := func() *exec.Cmd {
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	srv := redisServer()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })

	objects, _ := testenv.S3(t)
	_, nc, _ := testenv.JetStream(t)
	issuer, err := devissuer.New("https://idp.test", "clinimg")
	if err != nil {
		t.Fatal(err)
	}
	log, _ := testenv.Logger(t)
	waiter, err := NewWaiter(nc, events.DefaultNames, log)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{PublicURL: "https://clinimg.test", DevIssuer: issuer, UploadExpiry: 10 * time.Minute, ViewExpiry: 15 * time.Minute,
		MaxImageBytes: 1 << 20, MaxImages: 50, CommitWait: 2 * time.Second,
		Realtime: realtime.Settings{Mode: realtime.ModeSSE, Key: realtime.GenerateKey("test"), URL: "http://relay.test/sse", TTL: time.Hour}}
	s := NewServer(cfg, Deps{Store: session.NewStore(rdb, session.Options{}), Objects: objects, Verifier: issuer.Verifier(), Waiter: waiter, Logger: log})
	h := &harness{t: t, srv: httptest.NewServer(s.Router()), issuer: issuer, cfg: cfg}
	t.Cleanup(h.srv.Close)

	desk := h.desktop("user_abc")
	start := map[string]string{"patientId": "p1", "encounterId": "e1"}
	testenv.Eventually(t, 10*time.Second, "redis-server up", func() bool {
		return h.do("POST", "/api/session-tokens", desk, start).status == 200
	})
	_ = srv.Process.Kill()
	_ = srv.Wait()
	for _, r := range []response{
		h.do("GET", "/api/users/user_abc/session", desk, nil),
		h.do("POST", "/api/session-tokens", desk, map[string]any{"patientId": "p1", "encounterId": "e1", "discard": true}),
	} {
		if r.status != 503 || r.body["code"] != "unavailable" || r.body["error"] == "" {
			t.Errorf("with Redis down: %d %s, want 503 code unavailable", r.status, r.raw)
		}
	}
	redisServer()
	testenv.Eventually(t, 10*time.Second, "answers once Redis is back", func() bool {
		return h.do("POST", "/api/session-tokens", desk, start).status == 200
	})
}
