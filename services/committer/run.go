package committer

import (
	"context"
	"os"
	"sync"
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
		cfg.RetryBudget = 30 * time.Second
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
	rdb, nc, js, photos, name := conns.Redis, conns.NATS, conns.JS, conns.Blob, conns.Name
	cons, err := events.EnsureConsumer(ctx, js, cfg.Common.Names, events.ConsumerCommitter)
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

	checks := conns.Checks()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := ops.Serve(ctx, cfg.Common.OpsAddr, ops.Handler(reg, checks), nil); err != nil {
			errc <- err
			stop()
		}
	}()
	pub := outbox.New(rdb, js, store.Keys.Outbox(), name, log)
	pub.OnPublished = outbox.Instrument(reg, "committer", rdb, store.Keys.Outbox())
	go func() {
		defer wg.Done()
		if err := pub.Run(pubCtx); err != nil {
			errc <- err
		}
	}()
	log.Info("committer.start", "parallelism", cfg.Parallelism, "workers", cfg.Workers, "capabilities", cfg.Capabilities.String())
	cerr := consume.Run(ctx, cons, w.handle, consume.Options{
		Workers:    cfg.Workers,
		Logger:     log,
		DeadLetter: w.deadLetter,
		OnResult:   consume.Instrument(reg, "committer", cons),
	})
	// The commits in flight are done; let the publisher flush their last
	// events briefly, then stop it.
	flush, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	for {
		n, err := outbox.Depth(flush, rdb, store.Keys.Outbox())
		if err != nil || n == 0 || flush.Err() != nil {
			break
		}
		_ = sleep(flush, 50*time.Millisecond)
	}
	cancel()
	stopPub()
	wg.Wait()
	conns.Drain()
	log.Info("committer.stop")
	if cerr != nil {
		return cerr
	}
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}
