package thumbnailer

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/outbox"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/thumbnailer/preview"
)

// Run starts libvips (once per process), connects to Redis, NATS and S3,
// consumes image.uploaded until ctx is done, publishes the session outbox,
// and serves /healthz, /readyz and /metrics on cfg.Common.OpsAddr. It shuts
// down in order: stop taking photos and finish those in flight, flush and
// stop the outbox publisher, drain NATS, close Redis. libvips stays up: it
// cannot be restarted in the same process.
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

	conns, err := ops.Connect(ctx, cfg.Common, "thumbnailer", log)
	if err != nil {
		return err
	}
	defer conns.Close()
	rdb, nc, js, photos := conns.Redis, conns.NATS, conns.JS, conns.Blob
	cons, err := events.EnsureConsumer(ctx, js, cfg.Common.Names, events.ConsumerThumbnailer, cfg.Common.AckWait)
	if err != nil {
		return err
	}
	store := session.NewStore(rdb, session.Options{Prefix: cfg.Common.RedisPrefix, Names: cfg.Common.Names, Source: "/clinimg/thumbnailer"})
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
	log.Info("thumbnailer.start", "workers", cfg.Workers, "max_bytes", cfg.MaxBytes, "max_pixels", cfg.MaxPixels,
		"preview_size", cfg.PreviewSize, "viewer_size", cfg.ViewerSize, "heic", preview.HEICSupported())
	return conns.Run(ctx, ops.Worker{
		Service: "thumbnailer", OpsAddr: cfg.Common.OpsAddr, Registry: reg, Checks: conns.Checks(),
		Outbox: store.Keys.Outbox(), Logger: log,
		Instrument: func(p *outbox.Publisher) {
			p.OnPublished = outbox.Instrument(reg, "thumbnailer", rdb, store.Keys.Outbox())
		},
		Work: func(ctx context.Context) error {
			return consume.Run(ctx, cons, proc.Handle, consume.Options{
				Workers: cfg.Workers,
				Logger:  log,
				DeadLetter: func(ctx context.Context, ev events.Event, reason string) error {
					deadLetter(nc, cfg.Common.Names, ev, reason)
					return proc.GiveUp(ctx, ev, reason)
				},
				OnResult: func(_ events.Type, outcome string) { proc.m.messages.WithLabelValues(outcome).Inc() },
			})
		},
	})
}

// deadLetter announces a message whose deliveries ran out on the
// dead-letter subject (core NATS: no stream keeps it; whoever listens gets
// it).
func deadLetter(nc *nats.Conn, names events.Names, ev events.Event, reason string) {
	raw, err := json.Marshal(ev)
	if err != nil {
		return
	}
	msg := nats.NewMsg(names.DeadLetterSubject(events.ConsumerThumbnailer))
	msg.Data = raw
	msg.Header.Set("Clinimg-Reason", reason)
	_ = nc.PublishMsg(msg)
}
