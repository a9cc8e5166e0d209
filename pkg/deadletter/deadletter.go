// Package deadletter keeps the events a service gave up on: a message whose
// last allowed delivery failed, or that its consumer refused for good, is
// stored on the dead-letter stream (<stream>_DLQ, subjects
// <prefix>_dlq.<consumer>, kept 30 days) with why, instead of vanishing.
// An operator lists them and replays one once its cause is fixed (see
// cmd/deadletters and docs/deploy.md).
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// Headers a dead letter carries beside the original message's own.
const (
	HeaderReason   = "Clinimg-Reason"
	HeaderConsumer = "Clinimg-Consumer"
	HeaderSubject  = "Clinimg-Subject"    // the event's own subject
	HeaderSequence = "Clinimg-Stream-Seq" // its sequence in the event stream
	HeaderReplayed = "Clinimg-Replayed"   // on a replayed event: the dead letter's sequence
)

// MaxAge is how long dead letters are kept.
const MaxAge = 30 * 24 * time.Hour

// StreamName is the dead-letter stream of the event stream names.
func StreamName(n events.Names) string { return n.Stream + "_DLQ" }

// Ensure creates or updates the dead-letter stream, idempotently, never
// lowering its replicas.
func Ensure(ctx context.Context, js jetstream.JetStream, n events.Names, replicas int) error {
	replicas, err := events.StreamReplicas(ctx, js, StreamName(n), replicas)
	if err != nil {
		return err
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName(n),
		Description: "Clinical Images events a service gave up on",
		Subjects:    []string{n.DeadLetterSubject("*")},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      MaxAge,
		Duplicates:  10 * time.Minute,
		Replicas:    replicas,
	})
	if err != nil {
		return fmt.Errorf("ensure stream %s: %w", StreamName(n), err)
	}
	return nil
}

// Store puts and reads dead letters.
type Store struct {
	js    jetstream.JetStream
	names events.Names
}

// New returns the store of the event stream names.
func New(js jetstream.JetStream, n events.Names) *Store { return &Store{js: js, names: n} }

// Put stores msg, delivered to consumer, as a dead letter with why, and
// waits for the stream's ack. A second Put of the same delivery is stored
// once (its id is consumer:sequence).
func (s *Store) Put(ctx context.Context, consumer string, msg jetstream.Msg, reason string) error {
	meta, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	seq := strconv.FormatUint(meta.Sequence.Stream, 10)
	dl := nats.NewMsg(s.names.DeadLetterSubject(consumer))
	for k, v := range msg.Headers() {
		if k != jetstream.MsgIDHeader {
			dl.Header[k] = v
		}
	}
	dl.Header.Set(jetstream.MsgIDHeader, consumer+":"+seq)
	dl.Header.Set(HeaderReason, reason)
	dl.Header.Set(HeaderConsumer, consumer)
	dl.Header.Set(HeaderSubject, msg.Subject())
	dl.Header.Set(HeaderSequence, seq)
	dl.Data = msg.Data()
	if _, err := s.js.PublishMsg(ctx, dl); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	return nil
}

// Letter is one stored dead letter.
type Letter struct {
	Seq       uint64    // in the dead-letter stream: what Replay takes
	Consumer  string    // who gave up
	Reason    string    // why
	Subject   string    // the event's subject
	EventSeq  uint64    // the event's sequence in the event stream
	EventID   string    // the CloudEvents id
	EventType string    // the CloudEvents type
	Stored    time.Time // when it was given up
}

// List returns the dead letters, oldest first.
func (s *Store) List(ctx context.Context) ([]Letter, error) {
	st, err := s.js.Stream(ctx, StreamName(s.names))
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	var out []Letter
	for seq := uint64(1); ; {
		raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(s.names.DeadLetterSubject("*")))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("dead letters: %w", err)
		}
		out = append(out, letter(raw))
		seq = raw.Sequence + 1
	}
}

func letter(raw *jetstream.RawStreamMsg) Letter {
	l := Letter{Seq: raw.Sequence, Consumer: raw.Header.Get(HeaderConsumer), Reason: raw.Header.Get(HeaderReason),
		Subject: raw.Header.Get(HeaderSubject), Stored: raw.Time}
	l.EventSeq, _ = strconv.ParseUint(raw.Header.Get(HeaderSequence), 10, 64)
	if ev, err := events.Decode(raw.Data); err == nil {
		l.EventID, l.EventType = ev.ID, string(ev.Type)
	}
	return l
}

// Replay publishes dead letter seq's event again on its own subject, for
// every consumer of it (services handle a repeated event as they handle a
// redelivery), then deletes the dead letter. Its Nats-Msg-Id is new (the
// event's id is still in the envelope), so the event stream's duplicate
// window does not drop it; replaying the same letter twice within that
// window stores it once.
func (s *Store) Replay(ctx context.Context, seq uint64) (Letter, error) {
	st, err := s.js.Stream(ctx, StreamName(s.names))
	if err != nil {
		return Letter{}, fmt.Errorf("dead letters: %w", err)
	}
	raw, err := st.GetMsg(ctx, seq)
	if err != nil {
		return Letter{}, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	l := letter(raw)
	if l.Subject == "" || l.EventID == "" {
		return l, fmt.Errorf("dead letter %d: no subject or event id to replay", seq)
	}
	msg := nats.NewMsg(l.Subject)
	msg.Data = raw.Data
	for _, k := range []string{"Content-Type", "traceparent"} {
		if v := raw.Header.Get(k); v != "" {
			msg.Header.Set(k, v)
		}
	}
	msg.Header.Set(jetstream.MsgIDHeader, l.EventID+":replay:"+strconv.FormatUint(seq, 10))
	msg.Header.Set(HeaderReplayed, strconv.FormatUint(seq, 10))
	if _, err := s.js.PublishMsg(ctx, msg); err != nil {
		return l, fmt.Errorf("replay %d: %w", seq, err)
	}
	if err := st.DeleteMsg(ctx, seq); err != nil {
		return l, fmt.Errorf("replayed %d but could not delete it (replaying it again within 10 minutes is harmless): %w", seq, err)
	}
	return l, nil
}
