package committer

import (
	"context"
	"log/slog"
)

// compensate withdraws a Media of ours that must not stay in the record:
// one written for a photo no longer in its session (discarded while its
// write was on the way), or a second one for a photo already in the
// record. It deletes it, or marks it entered-in-error, whichever the
// server offers (ALEX offers neither), trying once: it reports false when
// the Media stays, for manual clean-up. Photos in the record that belong
// to their session are never withdrawn: a failed commit keeps them, and
// the next commit sends only the rest.
func (w *worker) compensate(ctx context.Context, log *slog.Logger, mediaID string) bool {
	caps := w.cfg.Capabilities
	action := "orphaned"
	var err error
	switch {
	case caps.Delete:
		action, err = "deleted", w.alex.DeleteMedia(ctx, mediaID)
	case caps.EnteredInError:
		action, err = "entered_in_error", w.alex.MarkEnteredInError(ctx, mediaID)
	}
	if err != nil {
		action = "orphaned"
		log.Error("commit.compensate", "media_id", mediaID, "err", err)
	}
	w.m.compensations.WithLabelValues(action).Inc()
	if action == "orphaned" {
		log.Error("commit.orphan", "media_id", mediaID)
		return false
	}
	return true
}
