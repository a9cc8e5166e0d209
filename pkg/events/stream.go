package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig is the one stream for every event. File storage; events are
// kept a day (sessions last hours), and publish dedupe by Nats-Msg-Id holds
// for ten minutes, longer than any outbox or relay retry. Replicas is 1 here
// and 3 in production (set by ops through Replicas).
func (n Names) StreamConfig(replicas int) jetstream.StreamConfig {
	if replicas <= 0 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:        n.Stream,
		Description: "Clinical Images events (CloudEvents 1.0 JSON)",
		Subjects:    []string{n.All()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      24 * time.Hour,
		Duplicates:  10 * time.Minute,
		Replicas:    replicas,
	}
}

// Durable consumer names, one per service; instances of a service share it.
const (
	ConsumerThumbnailer = "thumbnailer"
	ConsumerCommitter   = "committer"
	ConsumerRelay       = "relay"
	ConsumerAudit       = "audit"
)

// RelayGroup is the relay consumer's priority group. Its policy is
// "pinned": one relay at a time receives events (the others wait to take
// over), so each channel's events leave in stream order.
const RelayGroup = "relay"

// RelayPullExpiry is how long one of the relay's pull requests waits. A
// pinned relay renews its pin with every pull, so it pulls at least this
// often.
const RelayPullExpiry = 5 * time.Second

// ConsumerConfig is the durable pull consumer of one service. Every service
// acks explicitly; redeliveries back off so a poison message does not spin.
// ackWait, if positive, replaces the consumer's default AckWait: how long a
// claim on a message outlives a worker that died holding it
// (NATS_ACK_WAIT).
func (n Names) ConsumerConfig(name string, ackWait time.Duration) jetstream.ConsumerConfig {
	c := jetstream.ConsumerConfig{
		Durable:       name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: 256,
	}
	switch name {
	case ConsumerThumbnailer:
		c.FilterSubject = n.Filter(ImageUploaded)
		c.AckWait = time.Minute
		c.MaxDeliver = 10
	case ConsumerCommitter:
		c.FilterSubject = n.Filter(CommitRequested)
		// A commit of 50 photos takes a while: the worker sends InProgress
		// to hold its claim; AckWait is how long a crashed worker's claim
		// lasts (NATS_ACK_WAIT overrides it). A commit ends
		// when its retry budget runs out, not after a number of deliveries.
		c.AckWait = 30 * time.Second
		c.MaxDeliver = -1
		c.MaxAckPending = 64
	case ConsumerRelay:
		c.FilterSubject = n.All()
		c.AckWait = 15 * time.Second
		c.MaxDeliver = -1 // a screen event is never dropped; the relay retries Ably forever
		c.MaxAckPending = 1024
	case ConsumerAudit:
		// The audit trail appends every event of a session in stream
		// order: one message in flight at a time, across every instance,
		// and never dropped (it waits out an S3 outage).
		c.FilterSubject = n.All()
		c.AckWait = 30 * time.Second
		c.MaxDeliver = -1
		c.MaxAckPending = 1
	}
	if ackWait > 0 {
		c.AckWait = ackWait
	}
	if name == ConsumerRelay {
		// A relay that dies keeps its pin this long after its last pull
		// (every RelayPullExpiry at most); its held events come back after
		// AckWait. The next relay publishes nothing until it holds every
		// pending event (see services/relay), so order does not depend on
		// which comes first.
		c.PriorityGroups = []string{RelayGroup}
		c.PriorityPolicy = jetstream.PriorityPolicyPinned
		c.PinnedTTL = max(c.AckWait, 2*RelayPullExpiry)
	}
	return c
}

// DeadLetterSubject is where a message goes after its last delivery fails.
func (n Names) DeadLetterSubject(consumer string) string {
	return n.Prefix + "_dlq." + consumer
}

// Ensure creates or updates the stream, idempotently; every service calls it
// at start-up so none depends on another having run first. It never lowers
// the stream's replicas (see KeepReplicas): a service started without
// NATS_REPLICAS must not scale an R3 stream down to one copy.
func Ensure(ctx context.Context, js jetstream.JetStream, n Names, replicas int) (jetstream.Stream, error) {
	replicas, err := StreamReplicas(ctx, js, n.Stream, replicas)
	if err != nil {
		return nil, err
	}
	s, err := js.CreateOrUpdateStream(ctx, n.StreamConfig(replicas))
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", n.Stream, err)
	}
	return s, nil
}

// KeepReplicas is the replica count a service sets on a stream that has
// existing replicas (0: none yet) when it asks for requested: never fewer
// than the stream has. Lowering is an operator's decision (nats stream
// edit), not a side effect of a restart with a missing variable.
func KeepReplicas(existing, requested int) int {
	return max(existing, requested, 1)
}

// StreamReplicas is KeepReplicas for the stream name as the server has it.
func StreamReplicas(ctx context.Context, js jetstream.JetStream, name string, requested int) (int, error) {
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return KeepReplicas(0, requested), nil
	}
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", name, err)
	}
	return KeepReplicas(st.CachedInfo().Config.Replicas, requested), nil
}

// EnsureConsumer creates or updates one service's durable consumer (see
// ConsumerConfig for ackWait).
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, n Names, name string, ackWait time.Duration) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, n.Stream, n.ConsumerConfig(name, ackWait))
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s: %w", name, err)
	}
	return c, nil
}

// Publish sends ev to its subject with its id as Nats-Msg-Id and waits for
// the stream's ack. A repeat within the dedupe window is acked as duplicate
// and stored once.
func Publish(ctx context.Context, js jetstream.JetStream, n Names, ev Event) (*jetstream.PubAck, error) {
	raw, err := jsonMarshal(ev)
	if err != nil {
		return nil, err
	}
	return PublishRaw(ctx, js, n.SubjectOf(ev), ev.ID, ev.TraceParent, raw)
}

// PublishRaw publishes an already encoded envelope.
func PublishRaw(ctx context.Context, js jetstream.JetStream, subject, id, traceparent string, raw []byte) (*jetstream.PubAck, error) {
	ack, err := js.PublishMsg(ctx, Message(subject, id, traceparent, raw))
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	return ack, nil
}

// Message is the NATS message of an encoded envelope: its id as
// Nats-Msg-Id (the stream's dedupe), its content type, and the trace
// context of the request that caused it.
func Message(subject, id, traceparent string, raw []byte) *nats.Msg {
	msg := &nats.Msg{Subject: subject, Data: raw, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set("Content-Type", "application/cloudevents+json")
	if traceparent != "" {
		msg.Header.Set("traceparent", traceparent)
	}
	return msg
}
