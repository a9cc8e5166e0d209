package consume

import (
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Claims keeps a consumer's claim on the messages it holds: every interval
// it renews each one (InProgress) until it is released, so JetStream hands
// none of them to anyone else however long it is held. Run holds the one
// message a handler works on; the relay holds every event waiting for Ably.
//
// Renewals go in stream order: a claim's deadline then grows with the
// sequence, so if the process dies its messages come due, and are
// redelivered, in stream order.
//
// KeepClaims starts it; the caller must Stop it.
type Claims struct {
	mu   sync.Mutex
	held map[uint64]jetstream.Msg // by stream sequence, the latest delivery
	stop chan struct{}
	done chan struct{}
}

// KeepClaims starts renewing, every interval, the claims of the messages
// held until Stop.
func KeepClaims(every time.Duration) *Claims {
	c := &Claims{held: map[uint64]jetstream.Msg{}, stop: make(chan struct{}), done: make(chan struct{})}
	go c.renew(every)
	return c
}

func (c *Claims) renew(every time.Duration) {
	defer close(c.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		msgs := c.inOrder()
		c.mu.Unlock()
		// Outside the lock: a renewal already under way may still reach
		// a message released meanwhile, which JetStream ignores once it
		// is settled.
		for _, m := range msgs {
			_ = m.InProgress()
		}
	}
}

// Hold renews msg's claim from the next interval on. A redelivery of a
// sequence already held replaces the delivery held: the claim renewed,
// and the one Release returns, is always the latest.
func (c *Claims) Hold(seq uint64, msg jetstream.Msg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held[seq] = msg
}

// Release stops renewing seq's claim and returns its latest delivery (nil
// if it was not held), for the caller to settle.
func (c *Claims) Release(seq uint64) jetstream.Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	msg := c.held[seq]
	delete(c.held, seq)
	return msg
}

// ReleaseAll stops renewing every claim and returns the messages held, in
// stream order, for the caller to settle (a relay hands them back in order).
func (c *Claims) ReleaseAll() []jetstream.Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	msgs := c.inOrder()
	clear(c.held)
	return msgs
}

// Stop ends the renewals and returns once none is under way. What is still
// held stays held (ReleaseAll returns it) but is no longer renewed.
func (c *Claims) Stop() {
	close(c.stop)
	<-c.done
}

// inOrder is every message held, in stream order. c.mu is held.
func (c *Claims) inOrder() []jetstream.Msg {
	seqs := slices.Sorted(maps.Keys(c.held))
	msgs := make([]jetstream.Msg, len(seqs))
	for i, s := range seqs {
		msgs[i] = c.held[s]
	}
	return msgs
}
