package committer

import (
	"context"
	"os"
	"time"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/outbox"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Run serves /healthz, /readyz and /metrics on cfg.Common.OpsAddr, waits
// for Redis, NATS and S3 (not ready meanwhile), consumes commit.requested
// until ctx is done and publishes the session outbox. It shuts down in the
// order of ops.Group: stop taking commits (those in flight get the grace
// period, then go back to JetStream and resume from the ledger elsewhere),
// publish what is left in the outbox, drain NATS, close Redis.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = ops.Logger(os.Stderr, "committer", cfg.Common.LogLevel)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = ops.Registry()
	}
	cfg = cfg.withDefaults()
	m := newMetrics(reg)

	g := ops.NewGroup(ctx, log, cfg.Common.Grace)
	g.ServeOps(cfg.Common.OpsAddr, reg, nil)
	conns, err := ops.Connect(g, cfg.Common, "committer", log)
	if err != nil {
		return g.Stop(err)
	}
	rdb, nc, js, photos := conns.Redis, conns.NATS, conns.JS, conns.Blob
	cons, err := ops.Consumer(g.Context(), log, js, cfg.Common.Names, cfg.Consumer())
	if err != nil {
		return g.Stop(err)
	}
	alexCfg := cfg.ALEX
	alexCfg.Logger = log
	alexCfg.Observe = m.observeRequest
	alex, err := fhir.NewClient(alexCfg)
	if err != nil {
		return g.Stop(err)
	}
	store := session.NewStore(rdb, session.Options{Prefix: cfg.Common.RedisPrefix, Names: cfg.Common.Names, Source: "/clinimg/committer", SessionTTL: cfg.Common.SessionTTL})
	w := &worker{cfg: cfg, store: store, rdb: rdb, photos: photos, alex: alex, js: js, nc: nc,
		names: cfg.Common.Names, log: log, m: m}
	w.init()
	sw := &sweeper{store: store, peek: w.peek, recheck: cfg.Recheck, js: js, names: cfg.Common.Names,
		after: cfg.SweepAfter, log: log, now: time.Now, onSent: m.swept.Inc}
	g.Go(ops.StageWork, "sweep", func(ctx context.Context) error { return sw.run(ctx, cfg.SweepEvery) })

	g.Go(ops.StageWork, "consumer", func(ctx context.Context) error {
		return consume.Run(ctx, cons, w.handle, consume.Options{
			Workers: cfg.Workers,
			Grace:   g.Grace(),
			Logger:  log,
			// A commit that waits says when it tries again
			// (consume.RetryAfter); anything else (Redis, a lost lock)
			// is tried again soon.
			Backoff:     func(uint64) time.Duration { return cfg.RetryInitial },
			DeadLetters: deadletter.New(js, cfg.Common.Names),
			DeadLetter:  w.deadLetter,
			OnResult:    consume.Instrument(reg, "committer", cons),
		})
	})
	if err := conns.Publish(g, store.Keys.Outbox(), log, outbox.Instrument(reg, "committer", rdb, store.Keys.Outbox())); err != nil {
		return g.Stop(err)
	}
	checks := conns.Checks()
	checks["alex_token"] = alex.TokenReady
	g.Ready(checks)
	log.Info("committer.start", "parallelism", cfg.Parallelism, "workers", cfg.Workers, "capabilities", cfg.Capabilities.String())
	return g.Wait()
}
