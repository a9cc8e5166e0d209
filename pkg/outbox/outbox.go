// Package outbox moves the events that session changes appended to the Redis
// outbox stream into JetStream. An entry is deleted only after JetStream acked
// it, and it is published with its event id as Nats-Msg-Id, so a publisher
// that dies between the two publishes it again and the stream keeps one copy.
//
// It works as a pipeline of batches: read up to Options.Batch entries and
// publish them all asynchronously; while up to Options.Window batches wait
// for their acks, the next is read and sent; each batch, once acked, is
// acknowledged and deleted in one Redis round trip. An entry whose publish
// failed stays pending and is published again.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/events"

	"github.com/clinicalimages/clinimg/pkg/retry"
)

// Group is the Redis consumer group every publisher joins; entries are shared
// out between the processes that run one.
const Group = "publisher"

// Options are every knob of a publisher, in one place. The zero value takes
// the defaults named. A publisher's idle cost is one blocking XREADGROUP per
// Block and one XAUTOCLAIM per ClaimEvery.
type Options struct {
	// Batch is how many entries are read and in flight to JetStream at
	// once (default 256).
	Batch int
	// Block is how long a read waits for new entries before it asks again
	// (default 5 s). New entries end the wait at once, so this sets only the
	// idle cost, not the latency; it also bounds how long a stop waits for
	// the read in progress (a blocked read does not see its context end).
	Block time.Duration
	// ClaimIdle is how long an entry may sit unacked with a dead publisher
	// before another takes it over (default 30 s).
	ClaimIdle time.Duration
	// ClaimEvery is how often a publisher looks for a dead one's entries
	// (default ClaimIdle, 30 s: a crashed publisher's events wait up to
	// twice that; every publisher pays one command each time, idle or not).
	ClaimEvery time.Duration
	// Window is how many batches may be in flight at once (default 4):
	// the next is read and sent while earlier ones wait for their acks.
	Window int
	// AckWait bounds the wait for JetStream's acks of one batch; what is
	// not acked by then is published again (default 10 s).
	AckWait time.Duration
	// Flush bounds the last publishing once Run's context is done (default
	// 2 s): what this publisher still holds and what is waiting is
	// published until a read finds nothing (the outbox is shared, so it may
	// never be empty), so the events of work that stopped just before go
	// out now rather than with the next publisher.
	Flush time.Duration
}

func (o Options) withDefaults() Options {
	if o.Batch <= 0 {
		o.Batch = 256
	}
	if o.Window <= 0 {
		o.Window = 4
	}
	if o.Block <= 0 {
		o.Block = 5 * time.Second
	}
	if o.ClaimIdle <= 0 {
		o.ClaimIdle = 30 * time.Second
	}
	if o.ClaimEvery <= 0 {
		o.ClaimEvery = o.ClaimIdle
	}
	if o.AckWait <= 0 {
		o.AckWait = 10 * time.Second
	}
	if o.Flush <= 0 {
		o.Flush = 2 * time.Second
	}
	return o
}

// settleEvery is how long a read of new entries waits while batches are in
// flight: a new entry ends the wait at once, so this bounds only how late
// their outcome (a failure to retry) is seen, at the cost of one command per
// settleEvery while JetStream has not acked them.
const settleEvery = 100 * time.Millisecond

// Publisher drains one outbox stream. Any number may run, in any service.
type Publisher struct {
	rdb      redis.Cmdable
	js       jetstream.JetStream
	stream   string
	consumer string
	log      *slog.Logger
	opt      Options

	// OnPublished observes each published event (metrics).
	OnPublished func(t events.Type, duplicate bool)
	// step runs at each step of a batch ("read", "sent", "acked",
	// "deleted"); when it returns false the publisher stops right there,
	// as a process that died would. Tests use it.
	step func(name string) bool
}

// New returns a publisher for the outbox stream key on nc. consumer names
// this process within the group (host name and pid suit).
func New(rdb redis.Cmdable, nc *nats.Conn, stream, consumer string, log *slog.Logger, opt Options) (*Publisher, error) {
	opt = opt.withDefaults()
	// A JetStream context of its own: its async window is the batches in
	// flight, and an ack that never comes (a reconnect) frees its slot
	// after AckWait.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(opt.Batch*opt.Window),
		jetstream.WithPublishAsyncTimeout(opt.AckWait))
	if err != nil {
		return nil, fmt.Errorf("outbox jetstream: %w", err)
	}
	return &Publisher{rdb: rdb, js: js, stream: stream, consumer: consumer, log: log, opt: opt}, nil
}

// Run publishes until ctx is done, then finishes the batches in flight and
// flushes (see Options.Flush).
func (p *Publisher) Run(ctx context.Context) error {
	err := p.rdb.XGroupCreateMkStream(ctx, p.stream, Group, "0").Err()
	if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("outbox group: %w", err)
	}
	r := &pipeline{p: p, flights: make(chan flight, p.opt.Window), results: make(chan error, p.opt.Window), dead: make(chan struct{})}
	acker := make(chan struct{})
	go func() { defer close(acker); r.settleAll() }()
	r.publish(ctx)
	fctx, cancel := context.WithTimeout(context.Background(), p.opt.Flush)
	r.flush(fctx)
	cancel()
	close(r.flights)
	<-acker
	return nil
}

// flush publishes this consumer's pending entries, then new ones, a batch
// at a time, each settled before the next read, until a read finds nothing,
// a batch fails, or ctx ends.
func (r *pipeline) flush(ctx context.Context) {
	settled := func() bool {
		var failed error
		for r.inflight > 0 && !r.isDead() {
			failed = r.collect(failed, true)
		}
		return failed == nil && !r.isDead()
	}
	for _, from := range []string{"0", ">"} {
		for settled() && ctx.Err() == nil {
			msgs, err := r.p.read(ctx, from, 0)
			if err != nil || len(msgs) == 0 {
				break
			}
			f, err := r.p.send(msgs)
			r.flights <- f
			r.inflight++
			if err != nil {
				r.p.log.Warn("outbox.flush", "err", err)
				settled()
				return
			}
		}
	}
	settled()
}

// pipeline is one Run: the reading and sending loop, and the acker that waits
// for each batch's acks and deletes it, Window batches apart.
type pipeline struct {
	p        *Publisher
	flights  chan flight // batches sent, in order, waiting for their acks
	results  chan error  // one per settled batch
	inflight int
	dead     chan struct{} // closed when the test hook stopped the publisher
	died     sync.Once
}

// flight is one batch sent to JetStream.
type flight struct {
	drop []string // malformed entries, deleted with the batch
	sent []inflight
}

// inflight is one entry published and waiting for its ack.
type inflight struct {
	entry string
	typ   events.Type
	ack   jetstream.PubAckFuture
}

func (r *pipeline) die() { r.died.Do(func() { close(r.dead) }) }

func (r *pipeline) at(step string) bool {
	if r.isDead() {
		return false // a dead publisher takes no more steps
	}
	if r.p.step == nil || r.p.step(step) {
		return true
	}
	r.die()
	return false
}

// publish reads and sends batches until ctx is done. It starts with this
// consumer's own pending entries (left by a previous life of its name),
// claims a dead publisher's stale ones every ClaimEvery, and otherwise
// reads new ones. After a failure it lets the batches in flight settle,
// then publishes what is still pending again.
func (r *pipeline) publish(ctx context.Context) {
	p := r.p
	pending, from := true, "0" // own pending entries after from
	lastClaim := time.Time{}
	bo := retry.Backoff(100*time.Millisecond, 5*time.Second)
	var failed error
	for ctx.Err() == nil {
		if failed = r.collect(failed, r.inflight == p.opt.Window); r.isDead() {
			return
		}
		if failed != nil {
			for r.inflight > 0 && !r.isDead() {
				failed = r.collect(failed, true)
			}
			p.log.Warn("outbox.retry", "err", failed)
			failed, pending, from = nil, true, "0" // what failed is still ours, pending: retry it first
			_ = retry.Sleep(ctx, bo.NextBackOff()) // the loop ends with ctx
			continue
		}
		if r.inflight == p.opt.Window {
			continue
		}
		var msgs []redis.XMessage
		var err error
		switch {
		case pending:
			msgs, err = p.read(ctx, from, 0)
			if err == nil && len(msgs) == 0 {
				pending = false
				continue
			}
			if len(msgs) > 0 {
				from = msgs[len(msgs)-1].ID
			}
		case time.Since(lastClaim) > p.opt.ClaimEvery:
			lastClaim = time.Now()
			msgs, _, err = p.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: p.stream, Group: Group, Consumer: p.consumer,
				MinIdle: p.opt.ClaimIdle, Start: "0-0", Count: int64(p.opt.Batch),
			}).Result()
			if err == nil && len(msgs) == 0 {
				continue
			}
		case r.inflight > 0:
			// Batches are on their way: wait for new entries, so one
			// recorded now goes out at once rather than after the batches
			// before it are acked and deleted, but only for settleEvery,
			// so their outcome (a failure to retry) is seen soon.
			msgs, err = p.read(ctx, ">", min(p.opt.Block, settleEvery))
		default:
			msgs, err = p.read(ctx, ">", p.opt.Block)
		}
		if err != nil {
			if ctx.Err() == nil {
				failed = err
			}
			continue
		}
		if len(msgs) == 0 {
			bo.Reset()
			continue
		}
		if !r.at("read") {
			return
		}
		f, err := p.send(msgs)
		if !r.at("sent") {
			return
		}
		r.flights <- f
		r.inflight++
		failed = err
	}
}

// collect takes the outcomes of settled batches, waiting for one if wait,
// and returns the first failure.
func (r *pipeline) collect(failed error, wait bool) error {
	for r.inflight > 0 {
		var err error
		if wait {
			select {
			case err = <-r.results:
			case <-r.dead:
				return failed
			}
			wait = false
		} else {
			select {
			case err = <-r.results:
			default:
				return failed
			}
		}
		r.inflight--
		failed = cmpErr(failed, err)
	}
	return failed
}

func (r *pipeline) isDead() bool {
	select {
	case <-r.dead:
		return true
	default:
		return false
	}
}

// settleAll waits for each batch's acks in order, then acknowledges and
// deletes its acked entries in one Redis round trip. The acks come
// whatever Run's context says: a publisher told to stop still finishes
// the batches it sent rather than leave them to be published again.
func (r *pipeline) settleAll() {
	for f := range r.flights {
		if r.isDead() {
			continue
		}
		r.results <- r.settle(f)
	}
}

func (r *pipeline) settle(f flight) error {
	p := r.p
	done := f.drop
	type result struct {
		typ events.Type
		dup bool
	}
	acked := make([]result, 0, len(f.sent))
	var failed error
	timeout := time.NewTimer(p.opt.AckWait)
	defer timeout.Stop()
wait:
	for _, s := range f.sent {
		select {
		case ack := <-s.ack.Ok():
			done = append(done, s.entry)
			acked = append(acked, result{s.typ, ack.Duplicate})
		case err := <-s.ack.Err():
			failed = cmpErr(failed, fmt.Errorf("publish %s: %w", s.ack.Msg().Subject, err))
		case <-timeout.C:
			failed = cmpErr(failed, errors.New("publish: no ack within the wait"))
			break wait
		case <-r.dead:
			return nil
		}
	}
	if !r.at("acked") {
		return nil
	}
	if len(done) > 0 {
		if err := p.done(context.Background(), done); err != nil {
			return err
		}
	}
	if !r.at("deleted") {
		return nil
	}
	if p.OnPublished != nil {
		for _, a := range acked {
			p.OnPublished(a.typ, a.dup)
		}
	}
	p.log.Debug("outbox.published", "events", len(acked))
	return failed
}

func (p *Publisher) read(ctx context.Context, id string, block time.Duration) ([]redis.XMessage, error) {
	args := &redis.XReadGroupArgs{Group: Group, Consumer: p.consumer, Streams: []string{p.stream, id}, Count: int64(p.opt.Batch), Block: block}
	if block == 0 {
		args.Block = -1 // no BLOCK argument: return at once
	}
	res, err := p.rdb.XReadGroup(ctx, args).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("outbox read: %w", err)
	}
	var out []redis.XMessage
	for _, s := range res {
		out = append(out, s.Messages...)
	}
	return out, nil
}

// send publishes msgs asynchronously, in order. If one cannot be sent the
// rest stay pending and the error says so.
func (p *Publisher) send(msgs []redis.XMessage) (flight, error) {
	var f flight
	f.sent = make([]inflight, 0, len(msgs))
	for _, m := range msgs {
		msg, typ, ok := p.message(m)
		if !ok {
			f.drop = append(f.drop, m.ID) // not ours to understand: drop it rather than block the outbox
			continue
		}
		ack, err := p.js.PublishMsgAsync(msg, jetstream.WithStallWait(p.opt.AckWait))
		if err != nil {
			return f, fmt.Errorf("publish %s: %w", msg.Subject, err)
		}
		f.sent = append(f.sent, inflight{m.ID, typ, ack})
	}
	return f, nil
}

func cmpErr(first, next error) error {
	if first != nil {
		return first
	}
	return next
}

// message turns an outbox entry into the JetStream message it stands for,
// or reports it malformed. The envelope was encoded by a session script
// and goes out as it is: the event type comes from the subject and the
// trace context is found in place, so nothing is decoded on the way.
func (p *Publisher) message(m redis.XMessage) (*nats.Msg, events.Type, bool) {
	id, _ := m.Values["id"].(string)
	subject, _ := m.Values["subject"].(string)
	raw, _ := m.Values["event"].(string)
	typ := typeOf(subject)
	if id == "" || typ == "" || !strings.HasPrefix(raw, "{") {
		p.log.Error("outbox.malformed_entry", "entry", m.ID)
		return nil, "", false
	}
	return events.Message(subject, id, traceParentOf(raw), []byte(raw)), typ, true
}

// typeOf is the event type of a subject <prefix>.<type>.<userId>, or "".
func typeOf(subject string) events.Type {
	i := strings.LastIndexByte(subject, '.')
	if i < 0 || !events.ValidUserID(subject[i+1:]) {
		return ""
	}
	for _, t := range events.Types {
		if rest, ok := strings.CutSuffix(subject[:i], "."+string(t)); ok && rest != "" {
			return t
		}
	}
	return ""
}

// traceParentOf finds the envelope's traceparent without decoding it: a
// quote inside a JSON string is escaped, so the key's pattern occurs only
// as a key; what follows must be a valid trace context or is ignored.
func traceParentOf(raw string) string {
	const key = `"traceparent":"`
	i := strings.Index(raw, key)
	if i < 0 {
		return ""
	}
	v := raw[i+len(key):]
	j := strings.IndexByte(v, '"')
	if j < 0 || !events.ValidTraceParent(v[:j]) {
		return ""
	}
	return v[:j]
}

// done acknowledges and deletes entries in one round trip. If this fails
// they stay pending, are published again and dropped by JetStream's dedupe.
func (p *Publisher) done(ctx context.Context, entries []string) error {
	ctx, cancel := context.WithTimeout(ctx, p.opt.AckWait)
	defer cancel()
	pipe := p.rdb.TxPipeline()
	pipe.XAck(ctx, p.stream, Group, entries...)
	pipe.XDel(ctx, p.stream, entries...)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("outbox ack %d entries: %w", len(entries), err)
	}
	return nil
}

// Depth is the number of entries waiting in the outbox (a metric).
func Depth(ctx context.Context, rdb redis.Cmdable, stream string) (int64, error) {
	return rdb.XLen(ctx, stream).Result()
}
