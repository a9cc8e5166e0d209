package committer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/retry"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// photoStore is what the committer needs of S3.
type photoStore interface {
	Open(ctx context.Context, key string) (io.ReadCloser, int64, string, error)
	Delete(ctx context.Context, keys ...string) error
}

// worker runs commits. One per process; it is safe for concurrent commits
// of different sessions.
type worker struct {
	cfg    Config
	store  *session.Store
	peek   session.PeekFunc // store.Peek; tests wrap it
	rdb    redis.Cmdable
	photos photoStore
	alex   *fhir.Client
	js     jetstream.JetStream // dead letters; nil where none are kept
	nc     *nats.Conn
	names  events.Names
	log    *slog.Logger
	m      *metrics
	now    func() time.Time
	jitter func() float64 // in [0, 1)
}

func (w *worker) init() {
	if w.peek == nil {
		w.peek = w.store.Peek
	}
	if w.cfg.wrapPeek != nil {
		w.peek = w.cfg.wrapPeek(w.peek)
	}
	if w.now == nil {
		w.now = time.Now
	}
	if w.jitter == nil {
		w.jitter = rand.Float64
	}
}

// handle is the consumer's logic for one commit.requested: one attempt at
// the commit. nil acks it; consume.RetryError brings it back when the
// commit should try again.
func (w *worker) handle(ctx context.Context, ev events.Event) error {
	var ce session.CommitEvent
	if err := ev.DataAs(&ce); err != nil {
		return consume.Permanent(err)
	}
	userID := ev.Subject
	log := w.log.With("user_id", userID, "session_id", ce.SessionID, "commit_id", ce.CommitID)
	sess, err := w.current(ctx, userID, ce.CommitID)
	if err != nil || sess == nil {
		return w.settle(log, err)
	}
	if sess.CommitStatus == session.CommitCommitted {
		// Redelivered after success: make sure the temporary objects are gone.
		w.cleanup(ctx, log, *sess)
		return nil
	}
	l, lctx, err := w.lock(ctx, userID, 2*w.cfg.LockTTL, log)
	if err != nil {
		if errors.Is(err, errLocked) {
			w.m.commits.WithLabelValues("retried").Inc()
			return consume.RetryAfter(err, w.cfg.LockTTL)
		}
		return err
	}
	defer l.release(ctx)
	// Look again under the lock: another committer may have moved it on.
	sess, err = w.current(lctx, userID, ce.CommitID)
	if err != nil || sess == nil {
		return w.settle(log, err)
	}
	if sess.CommitStatus == session.CommitCommitted {
		w.cleanup(ctx, log, *sess)
		return nil
	}
	return w.attempt(lctx, log, *sess)
}

// current returns the session if commitID is still its commit, running or
// committed; nil if the commit is stale (stopped, failed, replaced) or the
// session gone.
//
// A read that says otherwise may be a stale replica's (Upstash), and
// acking on it would leave the session in_progress for ever, so that
// answer is confirmed by reading again (cfg.Recheck) first.
func (w *worker) current(ctx context.Context, userID, commitID string) (*session.Session, error) {
	s, ok, err := w.cfg.Recheck.Peek(ctx, w.peek, userID, func(s session.Session) bool {
		return s.CommitID == commitID && s.Commit != nil &&
			(s.CommitStatus == session.CommitInProgress || s.CommitStatus == session.CommitCommitted)
	})
	if err != nil || !ok {
		return nil, err
	}
	return &s, nil
}

// settle acks a commit that moved on without us; other errors go back to
// JetStream.
func (w *worker) settle(log *slog.Logger, err error) error {
	if err == nil || errors.Is(err, errStale) || errors.Is(err, errGone) || errors.Is(err, session.ErrStale) || errors.Is(err, session.ErrNotFound) {
		log.Info("commit.stale")
		w.m.commits.WithLabelValues("stale").Inc()
		return nil
	}
	return err
}

// lock takes the user's commit lock, waiting up to wait for a holder to
// finish (the message's InProgress keeps it claimed meanwhile).
func (w *worker) lock(ctx context.Context, userID string, wait time.Duration, log *slog.Logger) (*lease, context.Context, error) {
	deadline := time.Now().Add(wait)
	for {
		l, lctx, err := acquire(ctx, w.rdb, w.store.Keys.CommitLock(userID), w.cfg.LockTTL, log)
		if !errors.Is(err, errLocked) || time.Now().After(deadline) {
			return l, lctx, err
		}
		if err := retry.Sleep(ctx, 250*time.Millisecond); err != nil {
			return nil, nil, err
		}
	}
}

// attempt makes one attempt at the commit and settles what it found: the
// commit finishes when every photo is in the record, fails when a photo
// needs the GP (refused, conflict, needs checking), or else waits to try
// again, until the retry budget from the GP's request runs out.
func (w *worker) attempt(ctx context.Context, log *slog.Logger, sess session.Session) error {
	now := w.now()
	deadline := sess.Commit.RequestedAt.Add(w.cfg.RetryBudget)
	led := ledger{store: w.store, userID: sess.UserID, commitID: sess.CommitID}
	if !now.Before(deadline) {
		return w.giveUp(ctx, log, led, sess)
	}
	n := sess.Commit.Attempt + 1
	if n > 1 {
		// Both screens stop showing the wait: the commit is trying again.
		if err := led.attempt(ctx, n, nil); err != nil {
			return w.settle(log, err)
		}
	}
	log.Info("commit.attempt", "attempt", n, "photos", len(sess.Images), "in_record", sess.Commit.Done)
	a := &attempt{w: w, log: log, sess: sess, ledger: led}
	stopWatch := w.watchSlow(ctx, log, led, n, now, deadline)
	results := a.run(ctx)
	stopWatch()

	var waitOn []error
	inRecord, needGP := 0, 0
	for _, r := range results {
		switch {
		case r.stale:
			return w.moved(ctx, log, sess)
		case r.err != nil:
			waitOn = append(waitOn, r.err)
		case r.state == session.PhotoInRecord:
			inRecord++
		default:
			needGP++
		}
	}
	switch {
	case ctx.Err() != nil:
		// The lock was lost: whoever holds it now carries on.
		return fmt.Errorf("commit lock lost: %w", ctx.Err())
	case inRecord == len(results):
		return w.finish(ctx, log, sess)
	case needGP > 0:
		msg := fmt.Sprintf("%s %d of %d photos are in the patient record and stay there. Fix or delete the photos marked, then commit again to send the rest.",
			needsGP(needGP), inRecord, len(results))
		return w.fail(ctx, log, led, msg, a.orphans, "failed")
	}
	retryAfter, worst := worstWait(waitOn)
	delay := retryDelay(n, w.cfg.RetryInitial, w.cfg.RetryMax, retryAfter, w.jitter())
	next := now.Add(delay)
	if next.After(deadline) {
		next, delay = deadline, deadline.Sub(now)
	}
	reason, msg := describe(worst)
	wait := &session.CommitWait{Reason: reason, Message: msg, Attempt: n, NextTryAt: next.UTC(), GiveUpAt: deadline.UTC()}
	if err := led.attempt(ctx, n, wait); err != nil {
		return w.settle(log, err)
	}
	w.m.commits.WithLabelValues("retried").Inc()
	w.m.retries.WithLabelValues(reason).Inc()
	// Logged once, by consume (consume.retry), with this context.
	return consume.RetryAfter(fmt.Errorf("commit waiting (%s, attempt %d, %d photos waiting, %d in record): %w", reason, n, len(waitOn), inRecord, worst), delay)
}

// slowAnswer is how long an attempt runs before both screens are told
// that ALEX is slow to answer (a write can take up to ALEX_REQUEST_TIMEOUT):
// they show it within 10 s.
const slowAnswer = 8 * time.Second

// watchSlow tells the session, once an attempt has run slowAnswer, that it
// is waiting for ALEX and until when. The returned stop waits for that
// write, so it never lands over the attempt's outcome.
func (w *worker) watchSlow(ctx context.Context, log *slog.Logger, led ledger, n int, start, deadline time.Time) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(slowAnswer)
		defer t.Stop()
		select {
		case <-quit:
			return
		case <-t.C:
		}
		wait := &session.CommitWait{Reason: session.WaitALEXSlow, Message: "ALEX is slow to answer", Attempt: n,
			NextTryAt: start.Add(w.cfg.ALEX.Timeout).UTC(), GiveUpAt: deadline.UTC()}
		w.m.retries.WithLabelValues(session.WaitALEXSlow).Inc()
		if err := led.attempt(ctx, n, wait); err != nil {
			log.Warn("commit.slow_notice", "err", err)
		}
	}()
	return func() { close(quit); <-done }
}

// moved handles an attempt that found a photo moved on without it. Only
// when the commit itself is over is the work item acked: while it runs,
// acking could leave it with nobody to finish it, so it comes back soon.
func (w *worker) moved(ctx context.Context, log *slog.Logger, sess session.Session) error {
	cur, err := w.current(ctx, sess.UserID, sess.CommitID)
	if err != nil {
		return err
	}
	if cur == nil || cur.CommitStatus != session.CommitInProgress {
		return w.settle(log, nil)
	}
	return consume.RetryAfter(errStale, w.cfg.RetryInitial)
}

func needsGP(n int) string {
	if n == 1 {
		return "1 photo needs your attention before it can go in."
	}
	return fmt.Sprintf("%d photos need your attention before they can go in.", n)
}

// giveUp ends a commit whose retry budget ran out: nothing is lost, every
// photo keeps its state, and the GP can commit again.
func (w *worker) giveUp(ctx context.Context, log *slog.Logger, led ledger, sess session.Session) error {
	why := "ALEX kept failing"
	if wt := sess.Commit.Waiting; wt != nil {
		why = wt.Message
	}
	msg := fmt.Sprintf("Gave up after %s: %s. %d of %d photos are in the patient record and stay there; nothing is lost. Commit again to send the rest.",
		w.cfg.RetryBudget.Round(time.Second), why, sess.Commit.Done, len(sess.Images))
	return w.fail(ctx, log, led, msg, nil, "gave_up")
}

// fail ends the commit without every photo in the record.
func (w *worker) fail(ctx context.Context, log *slog.Logger, led ledger, msg string, orphans []string, outcome string) error {
	s, changed, err := w.store.FailCommit(ctx, led.userID, led.commitID, msg, orphans)
	if err != nil {
		return w.settle(log, err)
	}
	if changed {
		w.m.commits.WithLabelValues(outcome).Inc()
		w.observeDuration(s, outcome)
		log.Warn("commit."+outcome, "in_record", s.Commit.Done, "photos", len(s.Images), "orphans", len(orphans))
	}
	return nil
}

// finish marks the session committed and removes the temporary objects.
func (w *worker) finish(ctx context.Context, log *slog.Logger, sess session.Session) error {
	s, changed, err := w.store.FinishCommit(ctx, sess.UserID, sess.CommitID)
	if err != nil {
		return w.settle(log, fmt.Errorf("finish commit: %w", err))
	}
	if changed {
		w.m.commits.WithLabelValues("succeeded").Inc()
		w.observeDuration(s, "succeeded")
		log.Info("commit.succeeded", "photos", len(s.Images))
	}
	w.cleanup(ctx, log, s)
	return nil
}

func (w *worker) observeDuration(s session.Session, outcome string) {
	if s.Commit != nil && !s.Commit.RequestedAt.IsZero() {
		w.m.duration.WithLabelValues(outcome).Observe(w.now().Sub(s.Commit.RequestedAt).Seconds())
	}
}

// cleanup deletes a committed session's temporary objects. A failure is
// only logged: the bucket's lifecycle rule on temp/ removes them anyway.
func (w *worker) cleanup(ctx context.Context, log *slog.Logger, sess session.Session) {
	var keys []string
	for _, im := range sess.Images {
		keys = append(keys, im.S3Key, im.PreviewKey, im.ViewerKey, im.CleanKey)
	}
	if err := w.photos.Delete(ctx, keys...); err != nil {
		log.Warn("commit.cleanup", "err", err)
	}
}

// deadLetter runs when a commit.requested cannot be handled at all (a
// consumer's delivery limit ran out), once package consume has stored the
// event on the dead-letter stream: if its commit still runs, the commit
// fails with every photo's state kept.
func (w *worker) deadLetter(ctx context.Context, ev events.Event, reason string) error {
	var ce session.CommitEvent
	if ev.DataAs(&ce) != nil {
		return nil // Handle refused it for good, and consume logged why
	}
	log := w.log.With("user_id", ev.Subject, "session_id", ce.SessionID, "commit_id", ce.CommitID)
	sess, err := w.current(ctx, ev.Subject, ce.CommitID)
	if err != nil {
		return err
	}
	log.Error("commit.dead_lettered", "reason", reason)
	if sess == nil || sess.CommitStatus != session.CommitInProgress {
		return nil
	}
	led := ledger{store: w.store, userID: sess.UserID, commitID: sess.CommitID}
	msgText := fmt.Sprintf("The commit could not be carried out. %d of %d photos are in the patient record and stay there; nothing is lost. Commit again to send the rest.",
		sess.Commit.Done, len(sess.Images))
	return w.fail(ctx, log, led, msgText, nil, "dead_lettered")
}

// photoStore must keep matching blob.Store.
var _ photoStore = (*blob.Store)(nil)
