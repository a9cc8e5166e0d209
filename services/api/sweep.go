package api

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// sweeper deletes the objects of sessions that ended without a discard or
// a commit cleaning up after them (the GP walked away and the session
// expired, or it was replaced): every original issued to the session and
// the preview, viewer image and clean copy made from it. It reads the
// durable expiry index the presigned uploads write (session.Keys.Expiry),
// so a session that expired while no API ran is swept by the next; one API
// at a time sweeps (a Redis lock), and an object deleted twice is no harm.
type sweeper struct {
	store   sweepStore
	objects interface {
		Delete(ctx context.Context, keys ...string) error
	}
	every time.Duration
	log   *slog.Logger
}

// sweepStore is the part of session.Store a sweep uses.
type sweepStore interface {
	DueForSweep(ctx context.Context, token string, hold time.Duration, limit int) (ended []session.Ended, ok bool, err error)
	Swept(ctx context.Context, e session.Ended) error
	EndSweep(ctx context.Context, token string) error
}

// Run sweeps every s.every until ctx is done.
func (s sweeper) Run(ctx context.Context) error {
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.once(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("sweep.failed", "err", err)
		}
	}
}

// once sweeps up to 100 due sessions under the lock.
func (s sweeper) once(ctx context.Context) error {
	token := uuid.NewString()
	ended, ok, err := s.store.DueForSweep(ctx, token, max(2*s.every, 30*time.Second), 100)
	if !ok {
		return err
	}
	defer func() { _ = s.store.EndSweep(context.WithoutCancel(ctx), token) }()
	for _, e := range ended {
		var keys []string
		for _, k := range e.Keys {
			keys = append(keys, k)
			keys = append(keys, derivedKeys(k)...)
		}
		if err := s.objects.Delete(ctx, keys...); err != nil {
			return err // kept in the index: the next sweep tries again
		}
		if err := s.store.Swept(ctx, e); err != nil {
			return err
		}
		s.log.Info("sweep.session", "user_id", e.UserID, "session_id", e.SessionID, "objects", len(e.Keys))
	}
	return err
}

// derivedKeys are the thumbnailer's objects beside an original
// temp/{userId}/{imageId}.{ext} (thumbnailer.PreviewKey, ViewerKey,
// CleanKey).
func derivedKeys(original string) []string {
	base := original
	if i := strings.LastIndexByte(original, '.'); i > strings.LastIndexByte(original, '/') {
		base = original[:i]
	}
	return []string{base + ".preview.jpg", base + ".viewer.jpg", base + ".clean.jpg"}
}
