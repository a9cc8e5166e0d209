package thumbnailer

import (
	"context"
	"fmt"
	"os"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/outbox"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/thumbnailer/preview"
)

// Run starts libvips (once per process), serves /healthz, /readyz and
// /metrics on cfg.Common.OpsAddr, waits for Redis, NATS and S3 (not ready
// meanwhile), consumes image.uploaded until ctx is done and publishes the
// session outbox. It shuts down in the order of ops.Group: stop taking
// photos (those in flight get the grace period), publish what is left in
// the outbox, drain NATS, close Redis. libvips stays up: it cannot be
// restarted in the same process.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = ops.Logger(os.Stderr, "thumbnailer", cfg.Common.LogLevel)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = ops.Registry()
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if err := preview.Startup(preview.Settings{Logger: log}); err != nil {
		return fmt.Errorf("start libvips: %w", err)
	}

	g := ops.NewGroup(ctx, log, cfg.Common.Grace)
	g.ServeOps(cfg.Common.OpsAddr, reg, nil)
	conns, err := ops.Connect(g, cfg.Common, "thumbnailer", log)
	if err != nil {
		return g.Stop(err)
	}
	rdb, js, photos := conns.Redis, conns.JS, conns.Blob
	cons, err := ops.Consumer(g.Context(), log, js, cfg.Common.Names, cfg.Consumer())
	if err != nil {
		return g.Stop(err)
	}
	store := session.NewStore(rdb, session.Options{Prefix: cfg.Common.RedisPrefix, Names: cfg.Common.Names, Source: "/clinimg/thumbnailer", SessionTTL: cfg.Common.SessionTTL})
	proc := NewProcessor(photos, store, ProcessorOptions{
		Preview: preview.Options{
			PreviewSize: cfg.PreviewSize, ViewerSize: cfg.ViewerSize, MaxPixels: cfg.MaxPixels,
			Quality: cfg.PreviewQuality, CleanQuality: cfg.CleanQuality,
		},
		MaxBytes: cfg.MaxBytes,
		Logger:   log,
		Registry: reg,
	})
	reg.MustRegister(consume.Collector(cons))

	g.Go(ops.StageWork, "consumer", func(ctx context.Context) error {
		return consume.Run(ctx, cons, proc.Handle, consume.Options{
			Workers:     cfg.Workers,
			Grace:       g.Grace(),
			Logger:      log,
			DeadLetters: deadletter.New(js, cfg.Common.Names),
			DeadLetter:  proc.GiveUp,
			OnResult:    func(_ events.Type, outcome string) { proc.m.messages.WithLabelValues(outcome).Inc() },
		})
	})
	if err := conns.Publish(g, store.Keys.Outbox(), log, outbox.Instrument(reg, "thumbnailer", rdb, store.Keys.Outbox())); err != nil {
		return g.Stop(err)
	}
	g.Ready(conns.Checks())
	log.Info("thumbnailer.start", "workers", cfg.Workers, "max_bytes", cfg.MaxBytes, "max_pixels", cfg.MaxPixels,
		"preview_size", cfg.PreviewSize, "viewer_size", cfg.ViewerSize, "heic", preview.HEICSupported())
	return g.Wait()
}
