package api

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	recorded  *prometheus.CounterVec
	commits   *prometheus.CounterVec
	published *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_api_http_requests_total", Help: "HTTP requests by method, route and status.",
		}, []string{"method", "route", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "clinimg_api_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route"}),
		recorded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_api_images_recorded_total", Help: "Photos recorded, by outcome (added, duplicate).",
		}, []string{"outcome"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_api_commits_total", Help: "Commit requests by answer (succeeded, failed, accepted).",
		}, []string{"answer"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_events_published_total", Help: "Events moved from the outbox to JetStream, by type.",
		}, []string{"service", "type", "duplicate"}),
	}
	reg.MustRegister(m.requests, m.latency, m.recorded, m.commits, m.published)
	return m
}
