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
const RelayGroup = ConsumerRelay // a pinned consumer's group is its name

// RelayPullExpiry is how long one of the relay's pull requests waits. A
// pinned relay renews its pin with every pull, so it pulls at least this
// often.
const RelayPullExpiry = PinnedPullExpiry

// PinnedPullExpiry is how long a pull request of a pinned consumer's
// reader waits (the relay, the audit trail): the pin is renewed with every
// pull, so it must come well within the consumer's PinnedTTL.
const PinnedPullExpiry = 5 * time.Second

// Consumer is one service's durable pull consumer, as the service sets it
// from its own configuration. Every consumer acks explicitly and starts
// from the first event kept.
type Consumer struct {
	// Name is the durable name, shared by every instance of the service
	// (ConsumerThumbnailer, ConsumerCommitter, ConsumerRelay).
	Name string
	// Type is the event it reads; "" means every event.
	Type Type
	// AckWait is how long a claim on a message outlives a worker that died
	// holding it (a working handler renews it with InProgress).
	AckWait time.Duration
	// MaxDeliver is how many deliveries a message gets before package
	// consume dead-letters it; -1 is no limit.
	MaxDeliver int
	// MaxAckPending bounds the messages claimed and not yet acked.
	MaxAckPending int
	// Pinned lets one instance at a time receive messages (a priority
	// group named after the consumer: RelayGroup for the relay), the
	// others waiting to take over: the relay's and the audit trail's
	// stream order.
	Pinned bool
}

// ConsumerConfig is c as JetStream's consumer configuration.
func (n Names) ConsumerConfig(c Consumer) jetstream.ConsumerConfig {
	cc := jetstream.ConsumerConfig{
		Durable:       c.Name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		MaxAckPending: c.MaxAckPending,
		FilterSubject: n.All(),
	}
	if c.Type != "" {
		cc.FilterSubject = n.Filter(c.Type)
	}
	if c.Pinned {
		// A process that dies keeps its pin this long after its last pull
		// (every PinnedPullExpiry at most); its held events come back after
		// AckWait. The next reader acts on nothing until it holds every
		// pending event (see services/relay, pkg/audit), so order does not
		// depend on which comes first.
		cc.PriorityGroups = []string{c.Name}
		cc.PriorityPolicy = jetstream.PriorityPolicyPinned
		cc.PinnedTTL = max(c.AckWait, 2*PinnedPullExpiry)
	}
	return cc
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

// EnsureConsumer creates or updates one service's durable consumer.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, n Names, c Consumer) (jetstream.Consumer, error) {
	cons, err := js.CreateOrUpdateConsumer(ctx, n.Stream, n.ConsumerConfig(c))
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s: %w", c.Name, err)
	}
	return cons, nil
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
