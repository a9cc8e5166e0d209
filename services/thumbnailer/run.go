package thumbnailer

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

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
	rdb, nc, js, photos, name := conns.Redis, conns.NATS, conns.JS, conns.Blob, conns.Name
	cons, err := events.EnsureConsumer(ctx, js, cfg.Common.Names, events.ConsumerThumbnailer)
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

	checks := conns.Checks()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := ops.Serve(ctx, cfg.Common.OpsAddr, ops.Handler(reg, checks), nil); err != nil {
			errc <- err
			stop()
		}
	}()
	pub := outbox.New(rdb, js, store.Keys.Outbox(), name, log)
	pub.OnPublished = outbox.Instrument(reg, "thumbnailer", rdb, store.Keys.Outbox())
	reg.MustRegister(consume.Collector(cons))
	go func() {
		defer wg.Done()
		if err := pub.Run(pubCtx); err != nil {
			errc <- err
		}
	}()

	log.Info("thumbnailer.start", "workers", cfg.Workers, "max_bytes", cfg.MaxBytes, "max_pixels", cfg.MaxPixels,
		"preview_size", cfg.PreviewSize, "viewer_size", cfg.ViewerSize, "heic", preview.HEICSupported())
	cerr := consume.Run(ctx, cons, proc.Handle, consume.Options{
		Workers: cfg.Workers,
		Logger:  log,
		DeadLetter: func(ctx context.Context, ev events.Event, reason string) error {
			deadLetter(nc, cfg.Common.Names, ev, reason)
			return proc.GiveUp(ctx, ev, reason)
		},
		OnResult: func(_ events.Type, outcome string) { proc.m.messages.WithLabelValues(outcome).Inc() },
	})

	// The photos in flight are recorded; give the publisher a moment to
	// move their events to JetStream, then stop it.
	// (The outbox is shared with other services, so it may never be empty.)
	flush, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	for {
		n, err := outbox.Depth(flush, rdb, store.Keys.Outbox())
		if err != nil || n == 0 || !pause(flush, 20*time.Millisecond) {
			break
		}
	}
	cancel()
	stopPub()
	stop()
	wg.Wait()
	conns.Drain()
	log.Info("thumbnailer.stop")
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

// pause waits d, or less if ctx ends first; it reports whether d passed.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
