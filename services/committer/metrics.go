package committer

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the committer's Prometheus series.
type metrics struct {
	commits       *prometheus.CounterVec   // outcome: succeeded, failed, gave_up, dead_lettered, retried, stale
	swept         prometheus.Counter       // commit.requested sent again for a commit stuck in_progress
	duration      *prometheus.HistogramVec // outcome; from commit request to outcome
	photos        *prometheus.CounterVec   // how: created, found (already there after a crash or lost answer)
	requests      *prometheus.CounterVec   // op, status
	reqDuration   *prometheus.HistogramVec // op
	retries       *prometheus.CounterVec   // reason: a session.Wait* code
	compensations *prometheus.CounterVec   // action: deleted, entered_in_error, orphaned
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_committer_commits_total",
			Help: "Commit deliveries by outcome: succeeded, failed (a photo needs the GP), gave_up (retry budget spent), dead_lettered, retried (waits to try again), stale.",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clinimg_committer_commit_duration_seconds",
			Help:    "Time from the commit request to its outcome.",
			Buckets: []float64{0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 900},
		}, []string{"outcome"}),
		photos: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_committer_photos_total",
			Help: "Photos written to ALEX: created, or found already there after a crash or timeout.",
		}, []string{"how"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_committer_alex_requests_total",
			Help: "Requests to ALEX by operation (create, search, patient, delete, mark-entered-in-error, token) and HTTP status (0: no answer).",
		}, []string{"op", "status"}),
		reqDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clinimg_committer_alex_request_duration_seconds",
			Help:    "ALEX request latency by operation, photo upload included.",
			Buckets: prometheus.ExponentialBuckets(0.025, 2, 12),
		}, []string{"op"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_committer_retries_total",
			Help: "Attempts that ended waiting to try again, by reason (alex_unavailable, alex_throttled, alex_unclear, internal), and attempts still waiting on ALEX after 8 s (alex_slow).",
		}, []string{"reason"}),
		compensations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_committer_compensations_total",
			Help: "Media of ours that must not stay (photo discarded while its write was on the way, or a duplicate): deleted, marked entered-in-error, or left as orphans for manual clean-up.",
		}, []string{"action"}),
	}
	m.swept = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "clinimg_committer_commits_swept_total",
		Help: "Commits found in_progress past COMMIT_SWEEP_AFTER with no delivery handling them, sent again.",
	})
	reg.MustRegister(m.swept)
	reg.MustRegister(m.commits, m.duration, m.photos, m.requests, m.reqDuration, m.retries, m.compensations)
	return m
}

func (m *metrics) observeRequest(op string, status int, d time.Duration) {
	m.requests.WithLabelValues(op, strconv.Itoa(status)).Inc()
	m.reqDuration.WithLabelValues(op).Observe(d.Seconds())
}
