package outbox

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// Instrument registers on reg the series of a service's outbox publisher
// and returns the Publisher.OnPublished that feeds them:
//
//	clinimg_events_published_total{service,type,duplicate}  events moved to JetStream
//	clinimg_outbox_depth                                   entries waiting (read at scrape time)
//
// The API registers the same two names itself.
func Instrument(reg prometheus.Registerer, service string, rdb redis.Cmdable, stream string) func(events.Type, bool) {
	published := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "clinimg_events_published_total", Help: "Events moved from the outbox to JetStream, by type.",
	}, []string{"service", "type", "duplicate"})
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clinimg_outbox_depth", Help: "Events waiting in the Redis outbox.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, _ := Depth(ctx, rdb, stream)
		return float64(n)
	})
	reg.MustRegister(published, depth)
	return func(t events.Type, dup bool) {
		published.WithLabelValues(service, string(t), strconv.FormatBool(dup)).Inc()
	}
}
