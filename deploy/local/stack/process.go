package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Proc is one process of the topology. Its output goes to <dir>/logs/<name>.log.
// It can be killed, stopped and started again with the same command,
// environment and data.
type Proc struct {
	Name    string   // api-1, nats-2, redis
	Service string   // the compose service it plays
	Env     []string // its whole environment
	bin     string
	args    []string
	logPath string
	ready   func(ctx context.Context) error

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Getenv is a variable of the process's environment.
func (p *Proc) Getenv(key string) string {
	for i := len(p.Env) - 1; i >= 0; i-- {
		if k, v, ok := cut(p.Env[i]); ok && k == key {
			return v
		}
	}
	return ""
}

func cut(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return "", "", false
}

// Start runs the process (again) without waiting for it to be ready.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is running", p.Name)
		}
	}
	if err := os.MkdirAll(filepath.Dir(p.logPath), 0o755); err != nil {
		return err
	}
	log, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.Env
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group: a signal to the test does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

// Pid is the running process's id (0 when not started).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited is closed once the current run has ended.
func (p *Proc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Running reports whether the process is up.
func (p *Proc) Running() bool {
	select {
	case <-p.Exited():
		return false
	default:
		return p.Pid() != 0
	}
}

// Signal sends sig to the running process.
func (p *Proc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s not started", p.Name)
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	if p.Signal(syscall.SIGKILL) == nil {
		<-p.Exited()
	}
}

// Stop sends SIGTERM and waits up to d, then kills it. It reports whether
// the process ended by itself.
func (p *Proc) Stop(d time.Duration) bool {
	if p.Signal(syscall.SIGTERM) != nil {
		return true
	}
	select {
	case <-p.Exited():
		return true
	case <-time.After(d):
		p.Kill()
		return false
	}
}

// ExitCode is the last run's exit status (-1 if killed by a signal or still running).
func (p *Proc) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Ready waits until the process answers its readiness check.
func (p *Proc) Ready(ctx context.Context) error {
	for {
		select {
		case <-p.Exited():
			return fmt.Errorf("%s exited before it was ready (see %s)", p.Name, p.logPath)
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := p.ready(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%s not ready (see %s)", p.Name, p.logPath), err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Restart starts the process again and waits for it to be ready.
func (p *Proc) Restart(ctx context.Context) error {
	if err := p.Start(); err != nil {
		return err
	}
	return p.Ready(ctx)
}

// LogPath is where the process's output goes.
func (p *Proc) LogPath() string { return p.logPath }
