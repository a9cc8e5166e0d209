package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
)

var builds sync.Map // import path -> *build

type build struct {
	once sync.Once
	path string
	err  error
}

// Build compiles a main package of the workspace (an import path such as
// github.com/clinicalimages/clinimg/dev/alexsim/cmd/alexsim) once per test
// binary and returns the executable's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	v, _ := builds.LoadOrStore(pkg, &build{})
	b := v.(*build)
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "clinimg-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, path.Base(pkg))
		if out, err := exec.Command("go", "build", "-o", b.path, pkg).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Process is a program a test started; it is stopped (SIGTERM, then
// SIGKILL after 10 s) when the test ends.
type Process struct {
	Cmd  *exec.Cmd
	done chan struct{}
}

// StartProcess runs bin with env added to this process's environment.
// Its output goes to the test's log only if the test fails.
func StartProcess(t testing.TB, bin string, env ...string) *Process {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	return start(t, cmd)
}

func startArgs(t testing.TB, bin string, args []string) *Process {
	t.Helper()
	return start(t, exec.Command(bin, args...))
}

func start(t testing.TB, cmd *exec.Cmd) *Process {
	t.Helper()
	bin := cmd.Path
	logs := &Logs{t: t}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			for _, l := range logs.Lines() {
				t.Log(filepath.Base(bin) + ": " + l)
			}
		}
	})
	return p
}

// Stop ends the process and waits for it.
func (p *Process) Stop() { interrupt(p.Cmd, p.done) }

// interrupt asks cmd to stop (SIGINT), kills it if it has not exited
// (done closed) within 10 s, and waits for it.
func interrupt(cmd *exec.Cmd, done <-chan struct{}) {
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Exited is closed when the process has ended.
func (p *Process) Exited() <-chan struct{} { return p.done }

// WaitHTTP polls url until it answers (any status) or d passes.
func WaitHTTP(t testing.TB, p *Process, url string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		select {
		case <-p.done:
			t.Fatalf("%s exited before it served %s", p.Cmd.Path, url)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not serving %s after %s: %v", p.Cmd.Path, url, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreeAddr is a loopback address with a port free right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// S3Server is a running s3local process: a signature-checking S3 server
// with one access key pair. It stops when the test ends.
type S3Server struct {
	URL       string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string
	Process   *Process
}

// Config is the blob configuration that reaches this server's bucket.
func (s *S3Server) Config(bucket string) blob.Config {
	return blob.Config{Bucket: bucket, Region: s.Region, Endpoint: s.URL, AccessKey: s.AccessKey, SecretKey: s.SecretKey, PathStyle: true}
}

// StartS3 starts deploy/local's s3local command on a free port with a key
// pair of the test's own.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin := Build(t, "github.com/clinicalimages/clinimg/deploy/local/cmd/s3local")
	addr := FreeAddr(t)
	s := &S3Server{URL: "http://" + addr, AccessKey: "AKIATESTKEY", SecretKey: "test-secret-" + ID(), Region: "ap-southeast-2"}
	s.Process = StartProcess(t, bin, "S3LOCAL_ADDR="+addr, "S3LOCAL_ACCESS_KEY="+s.AccessKey, "S3LOCAL_SECRET_KEY="+s.SecretKey)
	WaitHTTP(t, s.Process, s.URL+"/", 30*time.Second)
	return s
}

// S3Process is S3 returning the server's process, for benchmarks that
// measure the process beside it.
func S3Process(t testing.TB) (*blob.Store, *Process) {
	t.Helper()
	st, srv := S3(t)
	return st, srv.Process
}

// MiniRedis starts deploy/local's miniredis command (the Redis-compatible
// server the local stack embeds) on a free port and returns a client.
func MiniRedis(t testing.TB) *redis.Client {
	t.Helper()
	bin := Build(t, "github.com/clinicalimages/clinimg/deploy/local/cmd/miniredis")
	addr := FreeAddr(t)
	StartProcess(t, bin, "MINIREDIS_ADDR="+addr)
	return pinged(t, addr)
}

// pinged is a client of the server on addr once it answers PING.
func pinged(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 256})
	t.Cleanup(func() { rdb.Close() })
	deadline := time.Now().Add(15 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("redis server on %s not answering", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return rdb
}

// RedisProcess is a redis-server of the benchmark's own (no persistence,
// a free port), so the CPU it uses and its command statistics are the
// benchmark's alone. It returns a client and the server's process.
func RedisProcess(t testing.TB) (*redis.Client, *Process) {
	t.Helper()
	addr := FreeAddr(t)
	_, port, _ := strings.Cut(addr, ":")
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not installed (make deps installs it): %v", err)
	}
	p := startArgs(t, bin, []string{"--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no", "--dir", t.TempDir()})
	return pinged(t, addr), p
}
