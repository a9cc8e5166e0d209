package committer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Must show 4: two committers on the one durable consumer and two
// commit.requested for one session: one commit, no duplicates.
func TestTwoCommittersOneSession(t *testing.T) {
	t.Parallel()
	const n = 12
	e := newEnv(t, alexsim.Options{Latency: 20 * time.Millisecond})
	logsA := e.startCommitter(nil)
	logsB := e.startCommitter(nil)
	userID, sess := e.seed(specs(n))
	ctx := context.Background()
	cid := e.commit(userID, sess)
	if _, err := e.store.BeginCommit(ctx, userID, sess.SessionID, "another"); !errors.Is(err, session.ErrCommitInProgress) {
		t.Fatalf("second BeginCommit: %v, want ErrCommitInProgress", err)
	}
	// A second work item for the same commit (as a republish would make),
	// under a new event id so the stream keeps both.
	ev, err := events.New("/test", events.CommitRequested, userID, session.CommitEvent{SessionID: sess.SessionID, CommitID: cid, Total: n}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Publish(ctx, e.js, events.DefaultNames, ev); err != nil {
		t.Fatal(err)
	}
	got := e.outcome(userID, cid, 60*time.Second)
	e.checkExactlyOnce(t, got)
	// One commit ran: the second work item waited on the lock, then found
	// the commit done.
	starts := 0
	for _, l := range append(logsA.Lines(), logsB.Lines()...) {
		if strings.Contains(l, `"msg":"commit.attempt"`) {
			starts++
		}
	}
	if starts != 1 {
		t.Errorf("commit started %d times, want once", starts)
	}
	// Both work items are acked: nothing is left to redeliver.
	cons, err := e.js.Consumer(ctx, events.DefaultNames.Stream, events.ConsumerCommitter)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "both work items acked", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.Delivered.Consumer >= 2
	})
}
