package consume

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// Instrument registers on reg the series every consuming service shares and
// returns the Options.OnResult that feeds them:
//
//	clinimg_events_consumed_total{service,type,outcome}  handled deliveries (ack, nak, term, dead)
//	clinimg_consumer_pending{consumer}                   messages not yet delivered
//	clinimg_consumer_ack_pending{consumer}               delivered, not yet acked
//	clinimg_consumer_redelivered{consumer}               redelivered, not yet acked
//	clinimg_consumer_delivered{consumer}                 deliveries so far, redeliveries included
//
// The consumer series are read from JetStream at scrape time (one request,
// at most 2 s); a scrape while NATS is away leaves them out.
func Instrument(reg prometheus.Registerer, service string, c jetstream.Consumer) func(events.Type, string) {
	consumed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "clinimg_events_consumed_total",
		Help:        "Event deliveries handled, by type and outcome (ack, nak, term, dead).",
		ConstLabels: prometheus.Labels{"service": service},
	}, []string{"type", "outcome"})
	reg.MustRegister(consumed, &consumerCollector{c: c})
	return func(t events.Type, outcome string) {
		consumed.WithLabelValues(string(t), outcome).Inc()
	}
}

var (
	pendingDesc     = prometheus.NewDesc("clinimg_consumer_pending", "Messages in the stream not yet delivered to the consumer.", []string{"consumer"}, nil)
	ackPendingDesc  = prometheus.NewDesc("clinimg_consumer_ack_pending", "Messages delivered and not yet acknowledged.", []string{"consumer"}, nil)
	redeliveredDesc = prometheus.NewDesc("clinimg_consumer_redelivered", "Messages redelivered at least once and not yet acknowledged.", []string{"consumer"}, nil)
	deliveredDesc   = prometheus.NewDesc("clinimg_consumer_delivered", "Deliveries made by the consumer, redeliveries included (consumer sequence).", []string{"consumer"}, nil)
)

// Collector exposes the clinimg_consumer_* gauges of c alone, for a service
// that counts its outcomes its own way rather than through Instrument.
func Collector(c jetstream.Consumer) prometheus.Collector { return &consumerCollector{c: c} }

// consumerCollector reads a durable consumer's state at scrape time.
type consumerCollector struct{ c jetstream.Consumer }

func (cc *consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pendingDesc
	ch <- ackPendingDesc
	ch <- redeliveredDesc
	ch <- deliveredDesc
}

func (cc *consumerCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := cc.c.Info(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(info.NumPending), info.Name)
	ch <- prometheus.MustNewConstMetric(ackPendingDesc, prometheus.GaugeValue, float64(info.NumAckPending), info.Name)
	ch <- prometheus.MustNewConstMetric(redeliveredDesc, prometheus.GaugeValue, float64(info.NumRedelivered), info.Name)
	ch <- prometheus.MustNewConstMetric(deliveredDesc, prometheus.CounterValue, float64(info.Delivered.Consumer), info.Name)
}
