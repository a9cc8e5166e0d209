package relay

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// gateConsumer is a consumer whose Info answers what info says; the gate
// uses nothing else of it.
type gateConsumer struct {
	jetstream.Consumer
	info func() *jetstream.ConsumerInfo
}

func (c gateConsumer) Info(context.Context) (*jetstream.ConsumerInfo, error) { return c.info(), nil }

// TestGateNotOpenedByAnAckWhileAsking: a sender that was publishing when a
// new pin closed the gate settles its event while the gate asks JetStream
// how many events are pending. JetStream then counts one fewer than the
// gate counted held, and with one event pending elsewhere (with a relay
// before this one) the two counts match. The gate must stay shut: that
// event may be older than the ones this relay would send. Once it is here
// (redelivered), the gate opens.
func TestGateNotOpenedByAnAckWhileAsking(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &ablyRelay{log: slog.New(slog.DiscardHandler), m: newMetrics(prometheus.NewRegistry()),
			claims: consume.KeepClaims(time.Hour), held: map[uint64]*item{}, channels: map[string]*channelQueue{},
			recheck: make(chan struct{}, 1), pin: "pin-2"}
		defer r.claims.Stop()
		sending := &item{seq: 9}
		r.held[sending.seq] = sending

		var mu sync.Mutex
		asked, arrived := 0, false
		cons := gateConsumer{info: func() *jetstream.ConsumerInfo {
			mu.Lock()
			defer mu.Unlock()
			asked++
			if asked == 1 {
				r.release(sending) // the sender settles its event meanwhile
			}
			r.mu.Lock()
			pending := len(r.held)
			r.mu.Unlock()
			if !arrived {
				pending++ // the event still with the relay before
			}
			return &jetstream.ConsumerInfo{NumAckPending: pending, PriorityGroups: []jetstream.PriorityGroupState{
				{Group: events.RelayGroup, PinnedClientID: "pin-2"}}}
		}}
		isOpen := func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.open
		}

		ctx, cancel := context.WithCancel(context.Background())
		var workers sync.WaitGroup
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.gate(ctx, cons, &workers)
		}()
		defer func() {
			cancel()
			<-done
		}()
		time.Sleep(time.Second) // virtual: the gate asks every 100 ms
		synctest.Wait()
		if isOpen() {
			t.Fatal("the gate opened with an event pending elsewhere: an ack landed while it asked")
		}
		mu.Lock()
		n := asked
		mu.Unlock()
		if n < 3 {
			t.Fatalf("the gate asked JetStream %d times in a second, want several", n)
		}

		// The event comes here, redelivered: now every pending one is held.
		r.mu.Lock()
		r.held[3] = &item{seq: 3}
		r.mu.Unlock()
		mu.Lock()
		arrived = true
		mu.Unlock()
		time.Sleep(time.Second)
		synctest.Wait()
		if !isOpen() {
			t.Fatal("the gate stayed shut once every pending event was held")
		}
	})
}
