// Package relay fans every browser-facing event out to the channel of the
// user it concerns, "session:<userId>", so the desktop widget and the phone
// see each photo, preview, edit and commit step as it happens.
//
// With ABLY_API_KEY set, the relay consumes the durable JetStream consumer
// "relay" through pkg/consume (its delivery loop, claim keeper and dead
// letters, as every consuming service) and publishes to Ably's REST API
// (see ablyRelay in ably.go): one
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

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

// Run serves /healthz, /readyz and /metrics on cfg.Common.OpsAddr, waits
// for NATS (not ready meanwhile), and relays until ctx is done. It shuts
// down in the order of ops.Group: stop taking work (SSE streams end; in
// Ably mode the events held go back to JetStream and the pin to the next
// relay), drain NATS and wait for it to close.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if cfg.Realtime.Mode != realtime.ModeAbly && cfg.Realtime.Key.IsZero() {
		return errors.New("relay: REALTIME_SIGNING_KEY is required for built-in SSE")
	}
	log := cfg.Logger
	if log == nil {
		log = ops.Logger(os.Stderr, "relay", cfg.Common.LogLevel)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = ops.Registry()
	}
	m := newMetrics(reg)
	g := ops.NewGroup(ctx, log, cfg.Common.Grace)
	var opsReady chan string
	if cfg.Listening != nil {
		opsReady = make(chan string, 1)
		go func() {
			select {
			case addr := <-opsReady:
				cfg.Listening("ops", addr)
			case <-g.Context().Done():
			}
		}()
	}
	g.ServeOps(cfg.Common.OpsAddr, reg, opsReady)
	nc, js, err := ops.JetStream(g.Context(), cfg.Common, ops.ProcessName("relay"), log)
	if err != nil {
		return g.Stop(err)
	}
	g.Finally("nats", func(ctx context.Context) error { return ops.DrainNATS(ctx, nc) })
	names := cfg.Common.Names
	stream, err := js.Stream(g.Context(), names.Stream)
	if err != nil {
		return g.Stop(fmt.Errorf("stream %s: %w", names.Stream, err))
	}
	checks := map[string]ops.Check{"nats": ops.NATSCheck(nc)}

	switch cfg.Realtime.Mode {
	case realtime.ModeAbly:
		cons, err := ops.Consumer(g.Context(), log, js, cfg.Common.Names, cfg.Consumer())
		if err != nil {
			return g.Stop(err)
		}
		reg.MustRegister(consume.Collector(cons))
		pub, err := newAblyRelay(cfg, cons.CachedInfo().Config.AckWait, deadletter.New(js, names), log, m)
		if err != nil {
			return g.Stop(err)
		}
		g.Go(ops.StageWork, "ably", func(ctx context.Context) error { return pub.run(ctx, stream, cons) })
		log.Info("relay.start", "mode", "ably", "key", cfg.Realtime.Key.Name, "publishers", cfg.Publishers)
	default:
		h := newHub(stream, names, cfg, log, m)
		if err := h.start(g.Context(), js); err != nil {
			return g.Stop(err)
		}
		checks["stream"] = h.ready
		g.Go(ops.StageWork, "sse", h.serve)
		log.Info("relay.start", "mode", "sse", "addr", cfg.Addr)
	}
	g.Ready(checks)
	return g.Wait()
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
