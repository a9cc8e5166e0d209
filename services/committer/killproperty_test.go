package committer_test

import (
	"context"

	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/committer"
)

// The commit property again, with real committer processes killed with
// SIGKILL at random points of their writes (before a POST reaches ALEX's
// store, or after it is stored with the answer lost) and started again,
// over the real JetStream consumer, with ALEX faults drawn from the same
// menu as TestCommitProperty and the GP stopping and committing again.
// After each schedule settles every photo is in ALEX exactly once, in its
// patient, with its own bytes, the session agrees, and nothing is lost.
// PROPERTY_KILL_N sets the number of schedules (default 4), PROPERTY_SEED
// replays one.
func TestCommitPropertyKill(t *testing.T) {
	t.Parallel()
	seeds := committer.PropertySeeds("PROPERTY_KILL_N", 4)
	var kills, faults atomic.Int64
	t.Cleanup(func() {
		t.Logf("killed committers: %d schedules, %d SIGKILLs, %d ALEX faults", len(seeds), kills.Load(), faults.Load())
	})
	for _, seed := range seeds {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			t.Parallel()
			k, f := killSchedule(t, seed)
			kills.Add(k)
			faults.Add(f)
		})
	}
}

func killSchedule(t *testing.T, seed uint64) (kills, faults int64) {
	rng := rand.New(rand.NewPCG(seed, seed))
	var caps fhir.Capabilities
	switch rng.IntN(3) {
	case 0:
		caps.ConditionalCreate = true
	case 1:
		caps.Search = true
	}
	e := newEnv(t, alexsim.Options{Capabilities: caps})
	over := map[string]string{"COMMIT_RETRY_INITIAL": "200ms", "COMMIT_RETRY_MAX": "1s", "LOG_LEVEL": "info",
		"COMMIT_PARALLELISM": strconv.Itoa(1 + rng.IntN(4))}
	userID, sess := e.seed(specs(3 + rng.IntN(4)))
	pFault, pKill := 0.3+0.3*rng.Float64(), 0.15+0.2*rng.Float64()
	t.Logf("seed %d: %d photos, capabilities %q, fault rate %.2f, kill rate %.2f (replay: PROPERTY_SEED=%d go test -race -run TestCommitPropertyKill ./services/committer)",
		seed, len(sess.Images), caps.String(), pFault, pKill, seed)

	var mu sync.Mutex // guards alexRng, cur, kills and faults from the simulator's goroutines
	alexRng := rand.New(rand.NewPCG(seed, ^seed))
	var quiet bool
	var cur *proc
	maxKills := int64(1 + rng.IntN(3))
	draw := func() float64 {
		mu.Lock()
		defer mu.Unlock()
		return alexRng.Float64()
	}
	start := func() {
		p := e.startProcess(over)
		mu.Lock()
		cur = p
		mu.Unlock()
	}
	// kill ends the running committer at this point of a write, and a new
	// one starts: JetStream gives it the commit after AckWait.
	kill := func(where string) bool {
		mu.Lock()
		p := cur
		ok := !quiet && p != nil && kills < maxKills && alexRng.Float64() < pKill
		if ok {
			cur = nil
			kills++
		}
		mu.Unlock()
		if !ok {
			return false
		}
		p.kill()
		t.Logf("SIGKILL %s", where)
		go start()
		return true
	}
	e.sim.SetHooks(alexsim.Hooks{
		Fault: func(method, path, identifier string) *alexsim.Fault {
			mu.Lock()
			q := quiet
			mu.Unlock()
			if q || draw() >= pFault {
				return nil
			}
			menu := committer.FaultMenu
			if method != "POST" {
				menu = menu[:6]
			}
			f := menu[int(draw()*float64(len(menu)))]
			mu.Lock()
			faults++
			mu.Unlock()
			return &f
		},
		MediaReceived: func(string) error {
			if kill("before a Media is stored") {
				return errKilled
			}
			return nil
		},
		MediaStored: func(string, string) error {
			if kill("after a Media is stored, its answer lost") {
				return errKilled
			}
			return nil
		},
	})
	start()
	ctx := context.Background()
	commits := 0
	commit := func(s session.Session) string {
		commits++
		return e.commit(userID, s)
	}
	cid := commit(sess)
	// The GP waits a while, sometimes stops waiting and commits again.
	for round := 0; round < 1+rng.IntN(3); round++ {
		var s session.Session
		attempts := 1 + rng.IntN(3)
		deadline := time.Now().Add(40 * time.Second)
		for time.Now().Before(deadline) {
			s, _ = e.store.Peek(ctx, userID)
			if s.Commit == nil || s.CommitID != cid || s.Commit.FinishedAt != nil || s.Commit.Attempt >= attempts {
				break
			}
			time.Sleep(20 * time.Millisecond) // polling, with the deadline above
		}
		if s.CommitStatus == session.CommitInProgress && rng.IntN(2) == 0 {
			if _, err := e.store.StopCommit(ctx, userID, ""); err == nil {
				t.Logf("the GP stops waiting (attempt %d)", s.Commit.Attempt)
			}
		}
		if s, _ = e.store.Peek(ctx, userID); s.CommitStatus == session.CommitNone {
			cid = commit(s)
		}
	}
	// Settle: ALEX behaves, nobody is killed; the GP commits until done.
	mu.Lock()
	quiet = true
	mu.Unlock()
	var final session.Session
	for try := 0; try < 5; try++ {
		s, _ := e.store.Peek(ctx, userID)
		if s.CommitStatus == session.CommitNone {
			cid = commit(s)
		}
		final = e.outcome(userID, cid, 90*time.Second)
		if final.CommitStatus == session.CommitCommitted {
			break
		}
	}
	e.checkExactlyOnce(t, final)
	// Nothing else reached ALEX: no Media under another identifier, none
	// written twice (withdrawn or not).
	mine := map[string]bool{}
	for _, im := range final.Images {
		mine[im.MediaIdentifier] = true
	}
	var stray []string
	for _, m := range e.sim.Media() {
		if !mine[m.Identifier.Value] {
			stray = append(stray, m.ID)
		}
	}
	if len(stray) > 0 || len(e.sim.Media()) != len(final.Images) {
		t.Errorf("ALEX holds %d Media for %d photos (strays %s)", len(e.sim.Media()), len(final.Images), strings.Join(stray, ","))
	}
	t.Logf("settled after %d commits, %d SIGKILLs, %d ALEX faults", commits, kills, faults)
	return kills, faults
}
