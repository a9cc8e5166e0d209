package stack_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// Must show 2 of issue 14 on the topology: with Redis down, an API started
// then serves /healthz but is not ready, and the running APIs answer 503
// {code: unavailable}; Redis back (from its AOF), the new API becomes ready
// and the running ones answer again, with no restart.
func TestRedisDownThenBack(t *testing.T) {
	c := newClient(t, top)
	g := newGP(t, top, c, "user_redis_down", "pat-redis-down")
	g.record("img-before", photo(900))
	api := top.Services["api"][0]
	pid := api.Pid()

	// Killed, not stopped: compose runs Redis with appendfsync always, so
	// the photo acknowledged just before the crash must come back from the
	// AOF (with everysec a killed redis-server lost it here once).
	top.Redis.Kill()
	t.Cleanup(func() {
		if !top.Redis.Running() {
			restart(t, top.Redis)
		}
	})
	base := "http://" + api.Getenv("API_ADDR")
	within(t, 30*time.Second, "a 503 from the API", func() bool {
		r, err := do(context.Background(), "GET", base+g.path("/session"), g.desk, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.status == 503 && (r.body["code"] != "unavailable" || r.body["error"] == "") {
			t.Fatalf("503 body %s, want {error, code: unavailable}", r.raw)
		}
		return r.status == 503
	})

	late, err := top.Spawn("api")
	if err != nil {
		t.Fatal(err)
	}
	if err := late.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { late.Stop(30 * time.Second) })
	ops := "http://" + late.Getenv("OPS_ADDR")
	within(t, 60*time.Second, "the late API's /healthz", func() bool {
		r, err := do(context.Background(), "GET", ops+"/healthz", "", nil)
		return err == nil && r.status == 200
	})
	// Not ready while Redis is down: asked several times over a few
	// seconds, never 200.
	for range 5 {
		r, err := do(context.Background(), "GET", ops+"/readyz", "", nil)
		if err != nil || r.status == 200 {
			t.Fatalf("late API /readyz with Redis down: %v %d %s", err, r.status, r.raw)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !late.Running() {
		t.Fatalf("the API started before Redis exited (see %s)", late.LogPath())
	}

	restart(t, top.Redis)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := late.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	// The running API answers again, as the same process, and the photo
	// recorded before Redis went down is still there (the AOF).
	var s session.Session
	within(t, 60*time.Second, "the API answering again", func() bool {
		r, err := do(context.Background(), "GET", base+g.path("/session"), g.desk, nil)
		return err == nil && r.status == 200
	})
	c.call("GET", g.path("/session"), g.desk, nil, 200, &s)
	if len(s.Images) != 1 || s.Images[0].ID != "img-before" {
		t.Errorf("after the restart the session holds %d photos, want img-before", len(s.Images))
	}
	if api.Pid() != pid || !api.Running() {
		t.Errorf("the API was restarted")
	}
	// The late API serves the same session.
	lateC := newClient(t, top)
	lateC.apis = []string{"http://" + late.Getenv("API_ADDR")}
	lateC.call("GET", g.path("/session"), g.desk, nil, 200, nil)
}

// Must show 4 of issue 14: `make run` (the clinimg-local command) with
// ALEX_* pointed at an ALEX simulator started separately (the topology's)
// commits there, and says ALEX is real.
func TestMakeRunCommitsToASeparateALEX(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "clinimg-local")
	build := exec.Command("go", "build", "-o", bin, "./cmd/clinimg-local")
	build.Dir = filepath.Join("..")
	build.Env = append(os.Environ(), "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build clinimg-local: %v\n%s", err, out)
	}
	committer := top.Services["committer"][0]
	port := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	}
	apiPort := port()
	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "PORT=" + apiPort, "RELAY_PORT=" + port(), "OPS_PORTS=false",
		"DATA_DIR=" + t.TempDir(), "LOG_LEVEL=warn"}
	for _, k := range []string{"ALEX_API_URL", "ALEX_OAUTH_TOKEN_URL", "ALEX_CLIENT_ID", "ALEX_CLIENT_SECRET", "ALEX_SCOPE", "ALEX_FACILITY_ID"} {
		cmd.Env = append(cmd.Env, k+"="+committer.Getenv(k))
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	alexLine := ""
	deadline := time.After(2 * time.Minute)
	for alexLine == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("clinimg-local ended before it said which parts it uses")
			}
			if strings.Contains(l, "ALEX") && strings.Contains(l, "real") {
				alexLine = l
			}
		case <-deadline:
			t.Fatal("clinimg-local did not say ALEX is real within 2 minutes")
		}
	}
	go func() {
		for range lines {
		}
	}()
	base := "http://127.0.0.1:" + apiPort
	r, err := do(context.Background(), "GET", base+"/dev/token?userId=user_makerun", "", nil)
	if err != nil || r.status != 200 {
		t.Fatalf("dev token: %v %d %s", err, r.status, r.raw)
	}
	c := &client{t: t, apis: []string{base}}
	g := &gp{c: c, user: "user_makerun", patient: "pat-makerun", desk: r.body["token"].(string)}
	g.start()
	before := mediaOf(t, "Patient/pat-makerun")
	for n := range 2 {
		g.record(fmt.Sprintf("img-%d", n), photo(950+n))
	}
	var res map[string]any
	c.call("POST", g.path("/commit"), g.desk, nil, 200, &res)
	if res["imageCount"] != float64(2) {
		t.Fatalf("commit: %v", res)
	}
	if got := mediaOf(t, "Patient/pat-makerun"); got != before+2 {
		t.Errorf("the separate ALEX holds %d Media for the patient, want %d (parts: %s)", got, before+2, alexLine)
	}
}
