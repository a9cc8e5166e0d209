package api

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Waiter hands commit outcomes to the requests waiting for them. It listens
// on plain NATS to the outcome subjects (JetStream delivers each stored
// message to plain subscribers too), so every API instance hears every
// outcome and no durable state is needed for a wait that may time out.
type Waiter struct {
	mu      sync.Mutex
	waiting map[string]chan session.CommitEvent
	sub     []*nats.Subscription
	log     *slog.Logger
}

// NewWaiter subscribes to commit outcomes; Close unsubscribes.
func NewWaiter(nc *nats.Conn, names events.Names, log *slog.Logger) (*Waiter, error) {
	w := &Waiter{waiting: map[string]chan session.CommitEvent{}, log: log}
	for _, t := range []events.Type{events.CommitSucceeded, events.CommitFailed} {
		sub, err := nc.Subscribe(names.Filter(t), w.deliver)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("subscribe %s: %w", t, err)
		}
		w.sub = append(w.sub, sub)
	}
	return w, nil
}

// Wait registers interest in commitID's outcome before the commit starts, so
// a fast committer cannot finish unseen. Call cancel when done.
func (w *Waiter) Wait(commitID string) (<-chan session.CommitEvent, func()) {
	ch := make(chan session.CommitEvent, 1)
	w.mu.Lock()
	w.waiting[commitID] = ch
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.waiting, commitID)
		w.mu.Unlock()
	}
}

func (w *Waiter) deliver(m *nats.Msg) {
	ev, err := events.Decode(m.Data)
	if err != nil {
		w.log.Warn("commit_wait.bad_event", "err", err)
		return
	}
	var data session.CommitEvent
	if err := ev.DataAs(&data); err != nil {
		w.log.Warn("commit_wait.bad_event", "err", err)
		return
	}
	w.mu.Lock()
	ch := w.waiting[data.CommitID]
	w.mu.Unlock()
	if ch != nil {
		select {
		case ch <- data:
		default: // already told (a redelivered outcome)
		}
	}
}

// Close stops listening.
func (w *Waiter) Close() {
	for _, s := range w.sub {
		_ = s.Unsubscribe()
	}
}
