// Package outbox moves the events that session changes appended to the Redis
// outbox stream into JetStream. An entry is deleted only after JetStream acked
// it, and it is published with its event id as Nats-Msg-Id, so a publisher
// that dies between the two publishes it again and the stream keeps one copy.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// Group is the Redis consumer group every publisher joins; entries are shared
// out between the processes that run one.
const Group = "publisher"

// Publisher drains one outbox stream. Any number may run, in any service.
type Publisher struct {
	rdb      redis.Cmdable
	js       jetstream.JetStream
	stream   string
	consumer string
	log      *slog.Logger

	// Block is how long one read waits for new entries (default 1 s).
	Block time.Duration
	// ClaimIdle is how long an entry may sit unacked with a dead publisher
	// before another takes it over (default 30 s).
	ClaimIdle time.Duration
	// OnPublished observes each published event (metrics).
	OnPublished func(t events.Type, duplicate bool)
	// afterPublish runs between the PubAck and the delete; tests use it to
	// stop a publisher at the worst moment.
	afterPublish func(id string)
}

// New returns a publisher for the outbox stream key. consumer names this
// process within the group (host name and pid suit).
func New(rdb redis.Cmdable, js jetstream.JetStream, stream, consumer string, log *slog.Logger) *Publisher {
	return &Publisher{rdb: rdb, js: js, stream: stream, consumer: consumer, log: log,
		Block: time.Second, ClaimIdle: 30 * time.Second}
}

// Run publishes until ctx is done.
func (p *Publisher) Run(ctx context.Context) error {
	err := p.rdb.XGroupCreateMkStream(ctx, p.stream, Group, "0").Err()
	if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("outbox group: %w", err)
	}
	// Start with our own pending entries (left by a previous life of this
	// consumer name), then claim others' stale ones, then read new ones.
	pending := true
	lastClaim := time.Time{}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var msgs []redis.XMessage
		var err error
		switch {
		case pending:
			msgs, err = p.read(ctx, "0", 0)
			if err == nil && len(msgs) == 0 {
				pending = false
				continue
			}
		case time.Since(lastClaim) > p.ClaimIdle/2:
			lastClaim = time.Now()
			msgs, _, err = p.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: p.stream, Group: Group, Consumer: p.consumer,
				MinIdle: p.ClaimIdle, Start: "0-0", Count: 100,
			}).Result()
			if err == nil && len(msgs) == 0 {
				continue
			}
		default:
			msgs, err = p.read(ctx, ">", p.Block)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.log.Warn("outbox.read", "err", err)
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		if err := p.publish(ctx, msgs); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.log.Warn("outbox.publish", "err", err)
			pending = true // what failed is still ours, pending: retry it first
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
	return nil
}

func (p *Publisher) read(ctx context.Context, id string, block time.Duration) ([]redis.XMessage, error) {
	args := &redis.XReadGroupArgs{Group: Group, Consumer: p.consumer, Streams: []string{p.stream, id}, Count: 100, Block: block}
	if block == 0 {
		args.Block = -1 // no BLOCK argument: return at once
	}
	res, err := p.rdb.XReadGroup(ctx, args).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []redis.XMessage
	for _, s := range res {
		out = append(out, s.Messages...)
	}
	return out, nil
}

func (p *Publisher) publish(ctx context.Context, msgs []redis.XMessage) error {
	for _, m := range msgs {
		id, _ := m.Values["id"].(string)
		subject, _ := m.Values["subject"].(string)
		raw, _ := m.Values["event"].(string)
		if id == "" || subject == "" || raw == "" {
			// Not ours to understand: drop it rather than block the outbox.
			p.log.Error("outbox.malformed_entry", "entry", m.ID)
			p.done(ctx, m.ID)
			continue
		}
		ev, err := events.Decode([]byte(raw))
		if err != nil {
			p.log.Error("outbox.malformed_event", "entry", m.ID, "err", err)
			p.done(ctx, m.ID)
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ack, err := events.PublishRaw(pctx, p.js, subject, id, ev.TraceParent, []byte(raw))
		cancel()
		if err != nil {
			return err
		}
		if p.afterPublish != nil {
			p.afterPublish(id)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.done(ctx, m.ID)
		if p.OnPublished != nil {
			p.OnPublished(ev.Type, ack.Duplicate)
		}
		p.log.Debug("outbox.published", append(ev.LogAttrs(), "duplicate", ack.Duplicate)...)
	}
	return nil
}

// done acknowledges and deletes one entry. If this fails the entry is
// published again later and dropped by JetStream's dedupe.
func (p *Publisher) done(ctx context.Context, entry string) {
	pipe := p.rdb.TxPipeline()
	pipe.XAck(ctx, p.stream, Group, entry)
	pipe.XDel(ctx, p.stream, entry)
	if _, err := pipe.Exec(ctx); err != nil {
		p.log.Warn("outbox.ack", "entry", entry, "err", err)
	}
}

// Depth is the number of entries waiting in the outbox (a metric).
func Depth(ctx context.Context, rdb redis.Cmdable, stream string) (int64, error) {
	return rdb.XLen(ctx, stream).Result()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
