package committer_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	// These tests mostly wait (JetStream's AckWait after a crash, Retry-After,
	// simulated latency), not compute: run more of them at once than there
	// are CPUs, unless -parallel was given.
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", strconv.Itoa(max(runtime.GOMAXPROCS(0), 8)))
	}
	dir, err := os.MkdirTemp("", "committer-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
)

// committerBinary builds cmd/committer once per test run.
func committerBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(binDir, "committer")
	buildOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", bin, "./cmd/committer").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/committer: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

// proc is a committer running as a process of its own.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProcess runs the committer binary with this env's configuration.
// The process is stopped when the test ends.
func (e *env) startProcess(over map[string]string) *proc {
	e.t.Helper()
	bin := committerBinary(e.t)
	cmd := exec.Command(bin)
	cmd.Env = os.Environ()
	for k, v := range e.vars {
		if o, ok := over[k]; ok {
			v = o
		}
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	for k, v := range over {
		if _, ok := e.vars[k]; !ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	e.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		if e.t.Failed() {
			e.t.Logf("committer pid %d output:\n%s", cmd.Process.Pid, p.out.String())
		}
	})
	return p
}

// kill ends the process with SIGKILL: no clean-up, no ack, no lock release.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}
