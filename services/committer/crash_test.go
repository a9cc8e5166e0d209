package committer_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// The committer process is killed (SIGKILL) at each point of a 20-photo
// commit and started again; the commit finishes with exactly 20 Media.
// JetStream redelivers the unacked commit after its AckWait
// (NATS_ACK_WAIT, 2 s here); the three run side by side.
func TestCrash(t *testing.T) {
	t.Parallel()
	const n, killAt = 20, 8
	points := []struct {
		name string
		// arm sets up the kill of p at the point; it returns once armed.
		arm func(e *env, userID, commitID string, kill func())
	}{
		{"before a POST", func(e *env, _, _ string, kill func()) {
			var once sync.Once
			count := 0
			var mu sync.Mutex
			e.sim.SetHooks(alexsim.Hooks{MediaReceived: func(string) error {
				mu.Lock()
				count++
				c := count
				mu.Unlock()
				if c < killAt {
					return nil
				}
				var killed bool
				once.Do(func() { kill(); killed = true })
				if killed {
					return errKilled // never stored: the POST did not happen
				}
				return nil
			}})
		}},
		{"after a POST, before the ledger write", func(e *env, _, _ string, kill func()) {
			var once sync.Once
			count := 0
			var mu sync.Mutex
			e.sim.SetHooks(alexsim.Hooks{MediaStored: func(string, string) error {
				mu.Lock()
				count++
				c := count
				mu.Unlock()
				if c < killAt {
					return nil
				}
				var killed bool
				once.Do(func() { kill(); killed = true })
				if killed {
					return errKilled // stored, but the answer never reaches the committer
				}
				return nil
			}})
		}},
		{"after the ledger write", func(e *env, userID, _ string, kill func()) {
			// At the first POST that arrives once killAt photos are recorded
			// in the record (at most COMMIT_PARALLELISM are on their way, so
			// later POSTs always come).
			var once sync.Once
			e.sim.SetHooks(alexsim.Hooks{MediaReceived: func(string) error {
				s, err := e.store.Peek(context.Background(), userID)
				if err != nil || s.Commit == nil || s.Commit.Done < killAt {
					return nil
				}
				var killed bool
				once.Do(func() { kill(); killed = true })
				if killed {
					return errKilled
				}
				return nil
			}})
		}},
	}
	for _, pt := range points {
		t.Run(pt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, alexsim.Options{Latency: 25 * time.Millisecond})
			userID, sess := e.seed(specs(n))
			first := e.startProcess(nil)
			killed := make(chan struct{})
			var once sync.Once
			kill := func() { once.Do(func() { first.kill(); close(killed) }) }
			cid := "c" + testenv.ID()
			pt.arm(e, userID, cid, kill)
			if _, err := e.store.BeginCommit(context.Background(), userID, sess.SessionID, cid); err != nil {
				t.Fatal(err)
			}
			select {
			case <-killed:
			case <-time.After(60 * time.Second):
				t.Fatal("the kill point was never reached")
			}
			mid, err := e.store.Peek(context.Background(), userID)
			if err != nil {
				t.Fatal(err)
			}
			if mid.CommitStatus != session.CommitInProgress {
				t.Fatalf("commit %s before the crash; the kill came too late", mid.CommitStatus)
			}
			e.sim.SetHooks(alexsim.Hooks{})
			second := e.startProcess(nil)
			got := e.outcome(userID, cid, 90*time.Second)
			e.checkExactlyOnce(t, got)
			// The restart looked photos up through the patient's NHI: neither
			// the patient id nor the NHI may reach the logs.
			for _, out := range []string{first.out.String(), second.out.String()} {
				if strings.Contains(out, testPatient) || strings.Contains(out, testNHI) {
					t.Error("a patient identifier reached the committer's logs")
				}
			}
			if len(got.Images) != n {
				t.Fatalf("%d images, want %d", len(got.Images), n)
			}
		})
	}
}
