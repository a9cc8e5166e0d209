package committer_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/committer"
)

// hideFirstRead answers the first read of each session "not found", as an
// Upstash replica that has not yet seen the API's write would.
func hideFirstRead(peek session.PeekFunc) session.PeekFunc {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(ctx context.Context, userID string) (session.Session, error) {
		mu.Lock()
		first := !seen[userID]
		seen[userID] = true
		mu.Unlock()
		if first {
			return session.Session{}, session.ErrNotFound
		}
		return peek(ctx, userID)
	}
}

func logged(lines []string, msg string) bool {
	for _, l := range lines {
		if strings.Contains(l, `"msg":"`+msg+`"`) {
			return true
		}
	}
	return false
}

// A commit whose session one read misses is not dropped: with the recheck
// the committer reads again and commits. Without it (one read) the commit
// is acked as stale and stays in_progress; the sweep then sends it again
// and it commits.
func TestStaleReadDoesNotDropCommit(t *testing.T) {
	t.Run("recheck", func(t *testing.T) {
		e := newEnv(t, alexsim.Options{})
		e.startCommitterWith(nil, func(c *committer.Config) {
			committer.WrapPeek(c, hideFirstRead)
			c.Recheck = session.Recheck{Reads: 3, Delay: 20 * time.Millisecond}
		})
		userID, sess := e.seed(specs(2))
		cid := e.commit(userID, sess)
		got := e.outcome(userID, cid, 60*time.Second)
		if got.CommitStatus != session.CommitCommitted {
			t.Fatalf("commit %s: %s, want committed", cid, got.CommitStatus)
		}
		e.checkExactlyOnce(t, got)
	})

	t.Run("one read, then the sweep", func(t *testing.T) {
		e := newEnv(t, alexsim.Options{})
		logs := e.startCommitterWith(nil, func(c *committer.Config) {
			committer.WrapPeek(c, hideFirstRead)
			c.Recheck = session.Recheck{Reads: 1, Delay: time.Millisecond}
		})
		userID, sess := e.seed(specs(2))
		cid := e.commit(userID, sess)
		testenv.Eventually(t, 60*time.Second, "the commit acked as stale on the hidden read", func() bool { return logged(logs.Lines(), "commit.stale") })
		s, err := e.store.Peek(context.Background(), userID)
		if err != nil {
			t.Fatal(err)
		}
		if s.CommitStatus != session.CommitInProgress {
			t.Fatalf("after the stale ack the commit is %s; the test needs it stuck in_progress", s.CommitStatus)
		}
		// A sweep that looks only at older commits leaves it alone.
		if n, err := committer.SweepOnce(context.Background(), e.store, e.js, events.DefaultNames, time.Hour); err != nil || n != 0 {
			t.Fatalf("sweep of commits older than an hour: sent %d, %v; want 0", n, err)
		}
		n, err := committer.SweepOnce(context.Background(), e.store, e.js, events.DefaultNames, 0)
		if err != nil || n != 1 {
			t.Fatalf("sweep: sent %d, %v; want 1", n, err)
		}
		got := e.outcome(userID, cid, 60*time.Second)
		if got.CommitStatus != session.CommitCommitted {
			t.Fatalf("swept commit %s: %s, want committed", cid, got.CommitStatus)
		}
		e.checkExactlyOnce(t, got)
		// Committed, it leaves the running commits: a sweep sends nothing.
		if n, err := committer.SweepOnce(context.Background(), e.store, e.js, events.DefaultNames, 0); err != nil || n != 0 {
			t.Errorf("sweep after the commit: sent %d, %v; want 0", n, err)
		}
		if z, err := e.rdb.ZCard(context.Background(), e.store.Keys.Running()).Result(); err != nil || z != 0 {
			t.Errorf("running commits after the commit: %d, %v; want 0", z, err)
		}
	})
}
