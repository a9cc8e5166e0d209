// Package ops is what every service offers its operators, built the same
// way everywhere: JSON logs, Prometheus metrics, /healthz and /readyz, the
// connections to Redis, NATS and S3 (waited for at start-up), and one
// supervision and shutdown primitive (Group) with the shutdown order
// written down in its stages.
package ops

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Logger returns a JSON logger at level. service, if not empty, names the
// service on every line (once: a logger that already names one gets
// another from its caller's With, never two).
func Logger(w io.Writer, service, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	if w == nil {
		w = os.Stderr
	}
	log := slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
	if service != "" {
		log = log.With("service", service)
	}
	return log
}

// Registry returns a Prometheus registry with the Go and process collectors.
func Registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Check is one readiness dependency. It gets its own CheckTimeout.
type Check func(ctx context.Context) error

// CheckTimeout bounds each readiness check; checks run in parallel, so
// /readyz answers within it whatever hangs.
const CheckTimeout = 2 * time.Second

// Health is a service's readiness: "starting" until its dependencies are
// up (Group.Ready), then its checks, and "stopping" once it shuts down.
type Health struct {
	state  atomic.Int32 // 0 starting, 1 ready, 2 stopping
	checks map[string]Check
}

// NewHealth returns a Health that is ready with checks (for a server built
// outside a Group, as in tests).
func NewHealth(checks map[string]Check) *Health {
	h := &Health{}
	h.start(checks)
	return h
}

func (h *Health) start(checks map[string]Check) {
	h.checks = checks // published by the store below
	h.state.CompareAndSwap(0, 1)
}

func (h *Health) stop() { h.state.Store(2) }

// Ready runs every check in parallel, each within CheckTimeout, and returns
// the status and body for /readyz: 200 when all pass, else 503 naming each
// dependency "ok" or "unavailable".
func (h *Health) Ready(ctx context.Context) (int, map[string]string) {
	switch h.state.Load() {
	case 0:
		return http.StatusServiceUnavailable, map[string]string{"status": "starting"}
	case 2:
		return http.StatusServiceUnavailable, map[string]string{"status": "stopping"}
	}
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(h.checks))
	for name, c := range h.checks {
		go func() {
			cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
			defer cancel()
			results <- result{name, c(cctx)}
		}()
	}
	body := map[string]string{"status": "ok"}
	status := http.StatusOK
	for range h.checks {
		r := <-results
		body[r.name] = "ok"
		if r.err != nil {
			body[r.name] = "unavailable"
			body["status"] = "unavailable"
			status = http.StatusServiceUnavailable
		}
	}
	return status, body
}

// Handler serves /healthz (the process is up), /readyz (see Health.Ready)
// and /metrics.
func Handler(reg *prometheus.Registry, h *Health) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		status, body := h.Ready(r.Context())
		writeJSON(w, status, body)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
