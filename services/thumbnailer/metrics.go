package thumbnailer

import "github.com/prometheus/client_golang/prometheus"

// metrics are the thumbnailer's Prometheus series.
type metrics struct {
	made     prometheus.Counter
	rejected *prometheus.CounterVec
	skipped  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	messages *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		made: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinimg_thumbnailer_previews_total",
			Help: "Photos whose previews and clean copy were made and recorded.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_thumbnailer_rejected_total",
			Help: "Photos rejected, by reason (not_image, unsupported, corrupt, too_many_pixels, too_large, missing, bad_key, failed).",
		}, []string{"reason"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_thumbnailer_skipped_total",
			Help: "Events that needed no work: photo already processed, removed, or session gone.",
		}, []string{"why"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clinimg_thumbnailer_processing_seconds",
			Help:    "Time from reading a photo to recording its outcome (ready, rejected, retry).",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"outcome"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinimg_thumbnailer_messages_total",
			Help: "image.uploaded deliveries by outcome (ack, nak, term, dead).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.made, m.rejected, m.skipped, m.duration, m.messages)
	return m
}
