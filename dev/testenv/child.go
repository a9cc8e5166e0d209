package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A benchmark that measures a service in its own process runs the load
// (clients, subscribers) in another: the test binary started again as a
// child with CLINIMG_CHILD naming a role. TestMain hands over to RunChild:
//
//	func TestMain(m *testing.M) { testenv.ChildMain(m, roles) }
//
// The child reads its configuration (JSON) from the file CLINIMG_CHILD_CONFIG names, says
// "ready" on a line of its own when the parent may start, works until its
// standard input closes (or its work is done), and writes its result as
// one JSON line last.
const childEnv, childConfigEnv = "CLINIMG_CHILD", "CLINIMG_CHILD_CONFIG"

// Role is the work of one kind of child: it reads cfg, calls ready once
// it is set up, and returns its result. done is closed when the parent
// wants the result.
type Role func(cfg []byte, ready func(), done <-chan struct{}) (any, error)

// ChildMain runs m, or the role a parent started this binary for.
func ChildMain(m *testing.M, roles map[string]Role) {
	name := os.Getenv(childEnv)
	if name == "" {
		os.Exit(m.Run())
	}
	role, ok := roles[name]
	if !ok {
		fmt.Fprintln(os.Stderr, "no child role", name)
		os.Exit(2)
	}
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	cfg, err := os.ReadFile(os.Getenv(childConfigEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := role(cfg, func() { fmt.Println("ready") }, done)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	raw, err := json.Marshal(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(raw))
	os.Exit(0)
}

// Child is a running child process.
type Child struct {
	t     testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	err   *Logs
	done  chan struct{}
}

// StartChild starts this test binary as the child role name with cfg.
func StartChild(t testing.TB, name string, cfg any) *Child {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "child-config.json")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+name, childConfigEnv+"="+file)
	c := &Child{t: t, cmd: cmd, lines: make(chan string, 16), err: &Logs{t: t}, done: make(chan struct{})}
	cmd.Stderr = c.err
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 256<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		_ = c.stdin.Close()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	return c
}

func (c *Child) stderr() string { return strings.Join(c.err.Lines(), "") }

// Pid is the child's process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Ready waits for the child to say it is set up.
func (c *Child) Ready(d time.Duration) {
	c.t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok || l != "ready" {
			c.t.Fatalf("child: %q before ready: %s", l, c.stderr())
		}
	case <-time.After(d):
		c.t.Fatalf("child not ready after %s: %s", d, c.stderr())
	}
}

// Result tells the child to finish and decodes its result into out.
func (c *Child) Result(out any, d time.Duration) {
	c.t.Helper()
	_ = c.stdin.Close()
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				<-c.done
				c.t.Fatalf("child ended without a result (%v): %s", c.cmd.ProcessState, c.stderr())
			}
			if l == "ready" {
				continue
			}
			if err := json.Unmarshal([]byte(l), out); err != nil {
				c.t.Fatalf("child result %q: %v", l, err)
			}
			return
		case <-timeout:
			c.t.Fatalf("child gave no result after %s: %s", d, c.stderr())
		}
	}
}

// CPUTime is the CPU (user and system) a process has used so far.
func CPUTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields start after its ')'.
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / hz, nil
}

// SelfCPUTime is the CPU this process has used so far.
func SelfCPUTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
