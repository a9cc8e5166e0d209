// Package relay fans every browser-facing event out to the channel of the
// user it concerns, "session:<userId>", so the desktop widget and the phone
// see each photo, preview, edit and commit step as it happens.
//
// With ABLY_API_KEY set, the relay consumes the durable JetStream consumer
// "relay" and publishes to Ably's REST API (see ablyRelay in ably.go): one
// event per publish under the event's own id, a deadline on every attempt,
// retries with backoff until Ably accepts, and only then the JetStream ack.
// Relays side by side share the consumer; one at a time is pinned to it and
// the others take over when it stops, so each channel's events reach Ably
// in stream order, held (claim renewed) through an outage of any length.
//
// Without it, the relay serves the same channel itself over Server-Sent
// Events on RELAY_ADDR (see SSE in sse.go for the wire format): every relay
// process reads the stream once, fans out in memory to its own subscribers,
// and a subscriber that reconnects with Last-Event-ID resumes from the
// stream position, so several relays can run side by side behind a load
// balancer with no sticky sessions.
package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

// Run relays until ctx is done, then stops taking work (SSE streams end,
// the consumer stops and unfinished messages go back to JetStream), drains
// NATS and returns.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	log := cfg.Logger
	if log == nil {
		log = ops.Logger(os.Stderr, "relay", cfg.Common.LogLevel)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = ops.Registry()
	}
	m := newMetrics(reg)

	nc, err := ops.NATS(cfg.Common.NATSURL, "relay", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	names := cfg.Common.Names
	stream, err := events.Ensure(ctx, js, names, cfg.Common.Replicas)
	if err != nil {
		return err
	}

	checks := map[string]ops.Check{"nats": func(context.Context) error {
		if !nc.IsConnected() {
			return errors.New("nats not connected")
		}
		return nil
	}}

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	goRun := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- err
				stop()
			}
		}()
	}

	switch cfg.Realtime.Mode {
	case realtime.ModeAbly:
		cons, err := events.EnsureConsumer(ctx, js, names, events.ConsumerRelay, cfg.Common.AckWait)
		if err != nil {
			return err
		}
		reg.MustRegister(consume.Collector(cons))
		pub, err := newAblyRelay(cfg, cons.CachedInfo().Config.AckWait, log, m)
		if err != nil {
			return err
		}
		log.Info("relay.start", "mode", "ably", "key", cfg.Realtime.Key.Name, "publishers", cfg.Publishers)
		goRun(func() error { return pub.run(runCtx, stream, cons) })
	default:
		if cfg.Realtime.Key.IsZero() {
			return errors.New("relay: REALTIME_SIGNING_KEY is required for built-in SSE")
		}
		h := newHub(stream, names, cfg, log, m)
		if err := h.start(ctx, js); err != nil {
			return err
		}
		checks["stream"] = h.ready
		log.Info("relay.start", "mode", "sse", "addr", cfg.Addr)
		goRun(func() error { return h.serve(runCtx) })
	}

	goRun(func() error {
		ready := make(chan string, 1)
		go func() {
			select {
			case addr := <-ready:
				if cfg.Listening != nil {
					cfg.Listening("ops", addr)
				}
			case <-runCtx.Done():
			}
		}()
		return ops.Serve(runCtx, cfg.Common.OpsAddr, ops.Handler(reg, checks), ready)
	})

	<-runCtx.Done()
	wg.Wait()
	if err := nc.Drain(); err != nil {
		log.Warn("relay.nats_drain", "err", err)
	}
	log.Info("relay.stopped")
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// metrics are the relay's Prometheus series.
type metrics struct {
	publishSeconds  prometheus.Histogram
	publishFailures *prometheus.CounterVec
	relayed         *prometheus.CounterVec
	held            prometheus.Gauge
	subscribers     prometheus.Gauge
	dropped         prometheus.Counter
	resumes         prometheus.Counter
	refused         *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "relay_ably_publish_seconds", Help: "Latency of accepted Ably publishes.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		publishFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_ably_publish_failures_total", Help: "Failed Ably publish attempts, by reason.",
		}, []string{"reason"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_events_relayed_total", Help: "Events delivered to Ably or to the SSE hub, by type.",
		}, []string{"type"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_ably_held_events", Help: "Events taken from JetStream and not yet accepted by Ably (growing: Ably refuses).",
		}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_sse_subscribers", Help: "Open SSE streams.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_sse_dropped_total", Help: "SSE streams closed because the client could not keep up (it resumes).",
		}),
		resumes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_sse_resumes_total", Help: "SSE streams opened with Last-Event-ID.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_sse_refused_total", Help: "SSE requests refused, by Ably error code.",
		}, []string{"code"}),
	}
	reg.MustRegister(m.publishSeconds, m.publishFailures, m.relayed, m.held,
		m.subscribers, m.dropped, m.resumes, m.refused)
	return m
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
