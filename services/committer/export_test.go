package committer

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// FaultMenu is what ALEX may do to one request in a property schedule,
// for the schedules that kill committer processes (committer_test).
var FaultMenu = faultMenu

// PropertySeeds are the seeds of a property run (propertySeeds).
var PropertySeeds = propertySeeds

// WrapPeek makes the committer read sessions through wrap (a stale
// replica, in tests).
func WrapPeek(cfg *Config, wrap func(session.PeekFunc) session.PeekFunc) { cfg.wrapPeek = wrap }

// SweepOnce runs one sweep of the commits in_progress for longer than
// after, as the committer's sweep does, and returns how many it sent again.
func SweepOnce(ctx context.Context, store *session.Store, js jetstream.JetStream, names events.Names, after time.Duration) (int, error) {
	sw := &sweeper{store: store, peek: store.Peek, recheck: session.Recheck{Reads: 2, Delay: 10 * time.Millisecond},
		js: js, names: names, after: after, log: slog.New(slog.DiscardHandler), now: time.Now}
	return sw.sweep(ctx)
}
