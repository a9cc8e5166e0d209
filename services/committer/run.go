package committer

import (
	"context"
	"os"
	"time"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/outbox"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Run connects to Redis, NATS, S3 and ALEX, consumes commit.requested until
// ctx is done, publishes the session outbox, and serves /healthz, /readyz
// and /metrics on cfg.Common.OpsAddr. It shuts down in order: stop taking
// commits and let those in flight finish, stop the outbox publisher, drain
// NATS, close Redis.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = ops.Logger(os.Stderr, "committer", cfg.Common.LogLevel)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = ops.Registry()
	}
	if cfg.Parallelism <= 0 {
		cfg.Parallelism = 4
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.RetryBudget <= 0 {
		cfg.RetryBudget = 10 * time.Minute
	}
	if cfg.RetryInitial <= 0 {
		cfg.RetryInitial = time.Second
	}
	if cfg.RetryMax < cfg.RetryInitial {
		cfg.RetryMax = max(30*time.Second, cfg.RetryInitial)
	}
	if cfg.ALEX.Timeout <= 0 {
		cfg.ALEX.Timeout = 2 * time.Minute
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = 20 * time.Second
	}
	if cfg.IdentifierSystem == "" {
		cfg.IdentifierSystem = fhir.DefaultImageIDNS
	}
	m := newMetrics(reg)

	conns, err := ops.Connect(ctx, cfg.Common, "committer", log)
	if err != nil {
		return err
	}
	defer conns.Close()
	rdb, nc, js, photos := conns.Redis, conns.NATS, conns.JS, conns.Blob
	cons, err := events.EnsureConsumer(ctx, js, cfg.Common.Names, events.ConsumerCommitter, cfg.Common.AckWait)
	if err != nil {
		return err
	}
	alexCfg := cfg.ALEX
	alexCfg.Logger = log
	alexCfg.Observe = m.observeRequest
	alex, err := fhir.NewClient(alexCfg)
	if err != nil {
		return err
	}
	store := session.NewStore(rdb, session.Options{Prefix: cfg.Common.RedisPrefix, Names: cfg.Common.Names, Source: "/clinimg/committer"})
	w := &worker{cfg: cfg, store: store, rdb: rdb, photos: photos, alex: alex, js: js, nc: nc,
		names: cfg.Common.Names, log: log, m: m}
	w.init()

	log.Info("committer.start", "parallelism", cfg.Parallelism, "workers", cfg.Workers, "capabilities", cfg.Capabilities.String())
	return conns.Run(ctx, ops.Worker{
		Service: "committer", OpsAddr: cfg.Common.OpsAddr, Registry: reg, Checks: conns.Checks(),
		Outbox: store.Keys.Outbox(), Logger: log,
		Instrument: func(p *outbox.Publisher) {
			p.OnPublished = outbox.Instrument(reg, "committer", rdb, store.Keys.Outbox())
		},
		Work: func(ctx context.Context) error {
			return consume.Run(ctx, cons, w.handle, consume.Options{
				Workers: cfg.Workers,
				Logger:  log,
				// A commit that waits says when it tries again
				// (consume.RetryAfter); anything else (Redis, a lost lock)
				// is tried again soon.
				Backoff:    func(uint64) time.Duration { return cfg.RetryInitial },
				DeadLetter: w.deadLetter,
				OnResult:   consume.Instrument(reg, "committer", cons),
			})
		},
	})
}
