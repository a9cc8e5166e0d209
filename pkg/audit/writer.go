package audit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// Writer appends each event's records to its session's trail. It is the
// audit consumer's logic (events.ConsumerAudit): nothing in a request
// waits for it. A redelivered event adds nothing (records are kept by
// event id); an S3 fault is returned for a retry.
type Writer struct {
	store *Store
	log   *slog.Logger
}

// NewWriter returns a Writer appending to store.
func NewWriter(store *Store, log *slog.Logger) *Writer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Writer{store: store, log: log}
}

// Handle files ev's records under its user and session.
func (w *Writer) Handle(ctx context.Context, ev events.Event) error {
	recs, err := FromEvent(ev)
	if errors.Is(err, ErrNotAudited) {
		w.log.Warn("audit.skipped", "event_id", ev.ID, "type", string(ev.Type))
		return nil
	}
	if err != nil {
		return consume.Permanent(fmt.Errorf("audit %s: %w", ev.Type, err))
	}
	if len(recs) == 0 {
		return nil
	}
	n, err := w.store.Append(ctx, ev.Subject, recs[0].SessionID, recs)
	if err != nil {
		return err
	}
	w.log.Debug("audit.appended", "event_id", ev.ID, "type", string(ev.Type), "session_id", recs[0].SessionID, "records", n)
	return nil
}

// Consumer is the audit consumer's JetStream settings. The trail appends
// every event of a session in stream order: one message in flight at a
// time, across every instance, and never dropped (it waits out an S3
// outage). ackWait, if positive (NATS_ACK_WAIT), replaces the default 30 s.
func Consumer(ackWait time.Duration) events.Consumer {
	return events.Consumer{Name: events.ConsumerAudit, AckWait: cmp.Or(ackWait, 30*time.Second),
		MaxDeliver: -1, MaxAckPending: 1}
}
