package committer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// sweepBatch is the most stuck commits one sweep takes.
const sweepBatch = 100

// sweeper finds commits left in_progress with no commit.requested being
// handled (an event acked on a stale read, a stream restored without it)
// and sends commit.requested again. Sending it again is always safe: the
// commit's ledger on the session makes each photo reach the record once,
// and a commit someone is still working on is waited for under its lock.
// A session that never reaches a committer would otherwise stay
// in_progress for ever: the desktop's reads keep its TTL fresh.
type sweeper struct {
	store   *session.Store
	peek    session.PeekFunc
	recheck session.Recheck
	js      jetstream.JetStream
	names   events.Names
	after   time.Duration
	log     *slog.Logger
	now     func() time.Time
	onSent  func() // metrics
}

// run sweeps every every until ctx ends.
func (s *sweeper) run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := s.sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("commit.sweep_failed", "err", err)
		}
	}
}

// sweep takes the commits in_progress since before now-after and sends
// commit.requested again for each still in_progress; the others leave the
// index. It returns how many it sent.
func (s *sweeper) sweep(ctx context.Context) (int, error) {
	users, at, err := s.store.ClaimStuck(ctx, s.now().Add(-s.after), sweepBatch)
	if err != nil {
		return 0, err
	}
	sent := 0
	var errs []error
	for _, userID := range users {
		sess, running, err := s.recheck.Peek(ctx, s.peek, userID, func(x session.Session) bool {
			return x.CommitStatus == session.CommitInProgress && x.CommitID != "" && x.Commit != nil
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !running {
			errs = append(errs, s.store.ForgetRunning(ctx, userID, at))
			continue
		}
		if err := s.resend(ctx, userID, sess); err != nil {
			errs = append(errs, err)
			continue
		}
		sent++
		s.log.Warn("commit.swept", "user_id", userID, "session_id", sess.SessionID, "commit_id", sess.CommitID)
		if s.onSent != nil {
			s.onSent()
		}
	}
	return sent, errors.Join(errs...)
}

// resend publishes commit.requested for the session's running commit
// under a new event id (JetStream would drop a repeat of the original's).
func (s *sweeper) resend(ctx context.Context, userID string, sess session.Session) error {
	ev, err := events.New("/clinimg/committer/sweep", events.CommitRequested, userID,
		session.CommitEvent{SessionID: sess.SessionID, Version: sess.Version, CommitID: sess.CommitID,
			Done: sess.Commit.Done, Total: sess.Commit.Total, ImageCount: len(sess.Images)}, s.now())
	if err != nil {
		return err
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode commit.requested: %w", err)
	}
	if _, err := s.js.PublishMsg(ctx, events.Message(s.names.SubjectOf(ev), ev.ID, "", raw)); err != nil {
		return fmt.Errorf("publish commit.requested: %w", err)
	}
	return nil
}
