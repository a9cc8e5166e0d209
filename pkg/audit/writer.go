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

// Handle files ev's records under its user and session: a batch of one,
// one read and one write of its document. The audit consumer writes
// batches (WriteBatch); Handle is the one-at-a-time path they are
// measured against.
func (w *Writer) Handle(ctx context.Context, ev events.Event) error {
	return w.WriteBatch(ctx, []events.Event{ev})[0]
}

// WriteBatch files the records of evs, given in stream order, with one
// read and one write per session document, and returns each event's
// outcome: nil once its records are in its document (or it has none, or
// no session to file them under), a consume.PermanentError if it cannot
// be read, or the error of its document's write, for a retry. Within a
// document the records keep the order of evs.
func (w *Writer) WriteBatch(ctx context.Context, evs []events.Event) []error {
	type doc struct {
		user, session string
		recs          []Record
		evs           []int
	}
	errs := make([]error, len(evs))
	docs := map[string]*doc{}
	var order []*doc
	for i, ev := range evs {
		recs, err := w.records(ev)
		if err != nil || len(recs) == 0 {
			errs[i] = err
			continue
		}
		key := Key(ev.Subject, recs[0].SessionID)
		d := docs[key]
		if d == nil {
			d = &doc{user: ev.Subject, session: recs[0].SessionID}
			docs[key] = d
			order = append(order, d)
		}
		d.recs = append(d.recs, recs...)
		d.evs = append(d.evs, i)
	}
	for _, d := range order {
		n, err := w.store.Append(ctx, d.user, d.session, d.recs)
		for _, i := range d.evs {
			errs[i] = err
		}
		if err == nil {
			w.log.Debug("audit.appended", "session_id", d.session, "events", len(d.evs), "records", n)
		}
	}
	return errs
}

// records is what ev files: none for an event without a session (logged),
// a consume.PermanentError for one that cannot be read.
func (w *Writer) records(ev events.Event) ([]Record, error) {
	recs, err := FromEvent(ev)
	if errors.Is(err, ErrNotAudited) {
		w.log.Warn("audit.skipped", "event_id", ev.ID, "type", string(ev.Type))
		return nil, nil
	}
	if err != nil {
		return nil, consume.Permanent(fmt.Errorf("audit %s: %w", ev.Type, err))
	}
	return recs, nil
}

// BatchSize is the most events the audit consumer holds at once (its
// MaxAckPending), and so the most one round of Consume writes.
const BatchSize = 256

// Consumer is the audit consumer's JetStream settings. The trail appends
// every event of a session in stream order and never drops one (it waits
// out an S3 outage): one instance at a time reads (pinned), holding up to
// BatchSize events, which it writes in rounds (see Consume). ackWait, if
// positive (NATS_ACK_WAIT), replaces the default 30 s.
func Consumer(ackWait time.Duration) events.Consumer {
	return events.Consumer{Name: events.ConsumerAudit, AckWait: cmp.Or(ackWait, 30*time.Second),
		MaxDeliver: -1, MaxAckPending: BatchSize, Pinned: true}
}
