package consume

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// Gate is what a reader of a pinned priority group learns from one read of
// its consumer's info (see CheckGate).
type Gate struct {
	// AllHeld: the consumer counts no more events pending than the reader
	// holds.
	AllHeld bool
	// PinnedElsewhere: the group's pinned client is not the reader's pin,
	// another client or none (the pin was given up and nothing new came to
	// assign it).
	PinnedElsewhere bool
}

// CheckGate reads cons's info and tells whether every event pending on it
// is held by a reader that held held of them, delivered under pin in
// group. A reader of a pinned group that was just pinned must not act on
// what it holds before that: after a takeover the events of the reader
// before come back redelivered, in no promised order and possibly after
// newer ones, and only once all are here is its stream order whole.
//
// The caller counts held before calling, and settles none of the held
// events until it acts on the answer: so all are still pending when
// JetStream answers, and if it counts no more than that, they are all
// there is. Events that arrive after the count are newer than every
// pending one (first deliveries go in stream order) or redeliveries of
// held ones. An error is the info read's; the gate stays shut.
func CheckGate(ctx context.Context, cons jetstream.Consumer, group, pin string, held int) (Gate, error) {
	info, err := cons.Info(ctx)
	if err != nil {
		return Gate{}, err
	}
	g := Gate{AllHeld: info.NumAckPending <= held}
	if pinned, ok := PinnedClient(info, group); ok {
		g.PinnedElsewhere = pinned != pin
	}
	return g, nil
}

// PinnedClient is the pinned client of group in info ("" if none) and
// whether info lists the group at all.
func PinnedClient(info *jetstream.ConsumerInfo, group string) (string, bool) {
	for _, g := range info.PriorityGroups {
		if g.Group == group {
			return g.PinnedClientID, true
		}
	}
	return "", false
}

// HoldsPin reports whether pin, the last a reader was delivered under, is
// the pinned client of cons's group. A reader never delivered to (pin "")
// was never pinned: JetStream pins a client as it delivers to it. If the
// consumer cannot be read it answers true: keeping a pin the reader may
// hold would hold up the next reader for the pin's TTL.
func HoldsPin(ctx context.Context, cons jetstream.Consumer, group, pin string) bool {
	if pin == "" {
		return false
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return true
	}
	pinned, _ := PinnedClient(info, group)
	return pinned == pin
}

// Unpin gives up cons's pin in group (consumer is cons's name on stream)
// if the reader, last delivered under pin, holds it (HoldsPin), so that
// the next reader is pinned at once. UnpinConsumer takes the pin from
// whoever holds it: a standby that stopped and unpinned unconditionally
// would take it from the reader holding the events and hand it to another
// standby, which waits for those events, or finds nobody pinned and gives
// back all it holds. The pin can still move between the read and the
// unpin; that window is one round trip. An error is UnpinConsumer's: the
// pin already moved, nothing to give up.
func Unpin(ctx context.Context, stream jetstream.Stream, cons jetstream.Consumer, consumer, group, pin string) error {
	if !HoldsPin(ctx, cons, group, pin) {
		return nil
	}
	return stream.UnpinConsumer(ctx, consumer, group)
}
