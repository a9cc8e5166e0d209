package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ably/ably-go/ably"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/retry"
)

// ablyRelay publishes the durable consumer's events to Ably, one event per
// publish, under the event's own id.
//
// One per publish because Ably wants the ids of a multi-message publish to
// be <base>:<index>: an event's id in a batch would depend on the batch it
// was put in, and the same event sent again in another batch (after a relay
// restart or a lost ack) would carry another id that Ably cannot recognise
// as a repeat. Alone, an event always carries its own id, so Ably's
// idempotent publishing drops every repeat (within its two minutes; the
// screens ignore older repeats). Ably's channel limit counts messages, not
// publishes, so batches would not carry a channel's events any faster.
//
// Each event goes to the user's channel (session:<userId>, the desktop's)
// and, when it belongs to a session, then to that session's channel
// (session:<userId>:<sessionId>), the only one a phone's token names: a
// phone never receives another session's events, replayed or live, since
// none is ever published where it listens. The event is acked once both
// took it; after a failure only the channels still missing it are tried
// again.
//
// Order: one relay at a time receives events (the consumer's pinned
// priority group), each channel's events leave one after another in stream
// order, and an event waiting for Ably stays claimed: the relay renews the
// claim (InProgress) of every event it holds until the event is published,
// however long Ably refuses, so JetStream never hands it to anyone else
// while this relay lives. Each time a relay is pinned it publishes nothing
// until it holds every event the consumer has pending (the gate): after a
// takeover the events of the relay before come back redelivered, in no
// promised order and possibly after newer ones, and only once all are here
// is each channel's queue in stream order. On shutdown the relay hands back
// what it holds and gives up its pin, so the next relay takes over at once.
type ablyRelay struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	rest    *ably.REST
	ackWait time.Duration
	// consume is how the consumer's messages are taken and given up:
	// the dead-letter store and the logger.
	consume consume.Options
	// claims keeps the claim of every held event (by stream sequence, its
	// latest delivery) renewed; it is set by run.
	claims *consume.Claims
	// sem bounds the publishes in flight at once (RELAY_PUBLISHERS).
	sem chan struct{}

	mu       sync.Mutex
	channels map[string]*channelQueue
	swept    time.Time        // when idle channels were last forgotten
	held     map[uint64]*item // every event taken and not yet settled, by stream sequence (as in claims)
	// The gate: senders run only while it is open. It opens for one pin
	// (the id JetStream sends with each event delivered to a pinned
	// relay); an event delivered under another pin closes it until this
	// relay again holds every pending event.
	open    bool
	pin     string
	recheck chan struct{}
	// released counts the held events given up to be settled (release):
	// the gate trusts its count of held events only if none was released
	// while JetStream was asked, since one a sender acks meanwhile leaves
	// the pending count without leaving the held count it was compared to.
	released uint64
}

// item is one event on its way: its stream sequence (its latest delivery
// is in ablyRelay.claims) and what it becomes on the channel.
type item struct {
	seq uint64
	bm  browserMessage
	typ events.Type
	// targets are the channels the event goes to, in order: the user's,
	// then its session's if it has one; sent counts those that took it.
	targets []string
	sent    int
}

// channelQueue is one user channel's events in stream order, sent by one
// goroutine at a time, paced by the channel's limiter. The same events'
// copies on the user's session channels keep that order and are paced by a
// limiter of their own (a session channel carries a subset of the user's
// events, so one limiter for all of them keeps each under Ably's limit).
type channelQueue struct {
	name    string
	items   []*item
	running bool
	lim     *rate.Limiter
	slim    *rate.Limiter
	idle    time.Time
}

func newAblyRelay(cfg Config, ackWait time.Duration, dead *deadletter.Store, log *slog.Logger, m *metrics) (*ablyRelay, error) {
	opts := []ably.ClientOption{
		ably.WithKey(cfg.Realtime.Key.Encode()),
		ably.WithUseBinaryProtocol(false),
		ably.WithHTTPRequestTimeout(cfg.PublishTimeout),
		ably.WithLogHandler(ablyLog{log}),
		ably.WithLogLevel(ably.LogWarning),
	}
	if cfg.AblyEndpoint != "" {
		host, tls, err := ablyEndpoint(cfg.AblyEndpoint, cfg.AblyTLS)
		if err != nil {
			return nil, fmt.Errorf("ably endpoint: %w", err)
		}
		opts = append(opts, ably.WithEndpoint(host), ably.WithTLS(tls))
		if !tls {
			opts = append(opts, ably.WithInsecureAllowBasicAuthWithoutTLS())
		}
	}
	rest, err := ably.NewREST(opts...)
	if err != nil {
		return nil, fmt.Errorf("ably client: %w", err)
	}
	return &ablyRelay{cfg: cfg, log: log, m: m, rest: rest, ackWait: ackWait,
		consume: consume.Options{DeadLetters: dead, Logger: log},
		sem:     make(chan struct{}, cfg.Publishers), channels: map[string]*channelQueue{}, held: map[uint64]*item{},
		recheck: make(chan struct{}, 1)}, nil
}

// run takes events until ctx is done, then stops publishing, hands back
// every event it still holds in stream order and gives up its pin.
func (r *ablyRelay) run(ctx context.Context, stream jetstream.Stream, cons jetstream.Consumer) error {
	r.claims = consume.KeepClaims(consume.HoldingEvery(r.ackWait))
	// work ends with ctx, or once no more events can come.
	work, stop := context.WithCancel(ctx)
	var workers sync.WaitGroup
	workers.Add(1)
	go func() {
		defer workers.Done()
		r.gate(work, cons, &workers)
	}()
	// What the client already received when ctx ends still comes out of
	// Deliver (it drains), is held, and is handed back in order with the
	// rest.
	err := consume.Deliver(ctx, cons, r.consume, func(d consume.Delivery) { r.take(work, d, &workers) },
		jetstream.PullMaxMessages(256), jetstream.PullPriorityGroup(events.RelayGroup), jetstream.PullExpiry(events.RelayPullExpiry))
	stop()
	workers.Wait()
	r.claims.Stop()
	r.handBack(stream, cons)
	return err
}

// take holds one delivered event and queues it on its channel.
func (r *ablyRelay) take(ctx context.Context, d consume.Delivery, workers *sync.WaitGroup) {
	ev, msg := d.Event, d.Msg
	bm, ok, err := toBrowser(ev)
	if err != nil {
		r.log.Error("relay.bad_data", "event_id", ev.ID, "event_type", string(ev.Type), "err", err)
		r.giveUp(ctx, msg, ev, "undecodable data", r.log)
		return
	}
	if !ok {
		_ = msg.Ack()
		return
	}
	seq := d.Meta.Sequence.Stream
	r.mu.Lock()
	defer r.mu.Unlock()
	if pin := msg.Headers().Get("Nats-Pin-Id"); pin != r.pin {
		r.pin, r.open = pin, false
		select {
		case r.recheck <- struct{}{}:
		default:
		}
	}
	// A redelivery of an event this relay still holds (its claim lapsed,
	// e.g. while NATS was unreachable) keeps its place: it is settled, and
	// its claim renewed, through the latest delivery.
	r.claims.Hold(seq, msg)
	if r.held[seq] != nil {
		return
	}
	it := &item{seq: seq, bm: bm, typ: ev.Type, targets: []string{bm.Channel}}
	if sc := bm.SessionChannel(); sc != "" {
		it.targets = append(it.targets, sc)
	}
	r.held[seq] = it
	r.m.held.Set(float64(len(r.held)))
	r.forgetIdle()
	q := r.channels[bm.Channel]
	if q == nil {
		q = &channelQueue{name: bm.Channel, lim: channelLimiter(r.cfg.ChannelRate), slim: channelLimiter(r.cfg.ChannelRate)}
		r.channels[bm.Channel] = q
	}
	// In stream order: a redelivered event may arrive after later ones.
	i, _ := slices.BinarySearchFunc(q.items, seq, func(a *item, s uint64) int { return cmp.Compare(a.seq, s) })
	q.items = slices.Insert(q.items, i, it)
	r.log.Debug("relay.event", append(ev.LogAttrs(), "seq", seq, "delivered", d.Meta.NumDelivered)...)
	if r.open && ctx.Err() == nil {
		r.start(ctx, q, workers)
	}
}

// forgetIdle forgets, at most every 10 s, the channels idle long enough
// for their limiters to be full again. r.mu is held.
func (r *ablyRelay) forgetIdle() {
	if time.Since(r.swept) < 10*time.Second {
		return
	}
	r.swept = time.Now()
	for name, q := range r.channels {
		if !q.running && len(q.items) == 0 && time.Since(q.idle) > 10*time.Second {
			delete(r.channels, name)
		}
	}
}

// start runs q's sender unless it runs. r.mu is held.
func (r *ablyRelay) start(ctx context.Context, q *channelQueue, workers *sync.WaitGroup) {
	if q.running {
		return
	}
	q.running = true
	workers.Add(1)
	go func() {
		defer workers.Done()
		r.send(ctx, q)
	}()
}

// gate opens the gate once this relay holds every event pending on the
// consumer (consume.CheckGate), and again each time a new pin closes it.
// While it is closed some pending event may be elsewhere: with a relay
// that stopped or died (it comes back here once redelivered) or on its way
// here, and a channel's newer event sent before it would break the
// channel's order. A sender already publishing when a new pin closed the
// gate may still settle its event while JetStream is asked; then the
// answer is not trusted and the gate asks again. It does not act on who
// else is pinned (the audit reader does): a delivery under a new pin
// closes the gate, in take.
func (r *ablyRelay) gate(ctx context.Context, cons jetstream.Consumer, workers *sync.WaitGroup) {
	for ctx.Err() == nil {
		r.mu.Lock()
		open, pin, held, released := r.open, r.pin, len(r.held), r.released
		r.mu.Unlock()
		if open {
			select {
			case <-r.recheck:
			case <-ctx.Done():
			}
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		g, err := consume.CheckGate(ictx, cons, events.RelayGroup, pin, held)
		cancel()
		if err == nil && g.AllHeld {
			r.mu.Lock()
			// Only if nothing changed while JetStream was asked: the pin,
			// or a held event settled meanwhile. Otherwise ask again.
			opened := r.pin == pin && r.released == released
			if opened {
				r.open = true
				for _, q := range r.channels {
					if len(q.items) > 0 && ctx.Err() == nil {
						r.start(ctx, q, workers)
					}
				}
			}
			r.mu.Unlock()
			if opened {
				r.log.Debug("relay.gate_open", "held", held)
			}
			continue
		}
		_ = retry.Sleep(ctx, 100*time.Millisecond) // the loop ends with ctx
	}
}

// send publishes q's events in order until it is empty or ctx is done.
func (r *ablyRelay) send(ctx context.Context, q *channelQueue) {
	for {
		r.mu.Lock()
		if len(q.items) == 0 || !r.open || ctx.Err() != nil {
			q.running = false
			q.idle = time.Now()
			r.mu.Unlock()
			return
		}
		it := q.items[0]
		r.mu.Unlock()
		if !r.deliver(ctx, q, it) {
			continue // ctx is done: the loop ends, the event stays held
		}
		r.mu.Lock()
		q.items = slices.DeleteFunc(q.items, func(x *item) bool { return x == it })
		r.mu.Unlock()
	}
}

// deliver publishes one event to each of its channels in turn, retrying
// until Ably accepts it, and acks it. It returns false, with the event still
// held, if ctx ended first. An event Ably refuses for good is terminated
// (logged), except one too large, which is sent again as a resync marker.
func (r *ablyRelay) deliver(ctx context.Context, q *channelQueue, it *item) bool {
	log := r.log.With("channel", q.name, "event_id", it.bm.EventID)
	bo := retry.Backoff(200*time.Millisecond, 10*time.Second)
	resized := false
	for attempt := 1; ; attempt++ {
		lim := q.lim
		if it.sent > 0 {
			lim = q.slim
		}
		channel := r.rest.Channels.Get(it.targets[it.sent])
		if err := lim.Wait(ctx); err != nil {
			return false
		}
		select {
		case r.sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		pctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
		start := time.Now()
		err := channel.PublishMultiple(pctx, []*ably.Message{{ID: it.bm.EventID, Name: it.bm.Name, Data: it.bm.Data}})
		cancel()
		<-r.sem
		if err == nil {
			r.m.publishSeconds.Observe(time.Since(start).Seconds())
			if it.sent++; it.sent < len(it.targets) {
				continue
			}
			if err := r.release(it).Ack(); err != nil {
				// JetStream delivers it again, and it is published again
				// under the same id: Ably drops the repeat.
				log.Warn("relay.ack_failed", "err", err)
			}
			r.m.relayed.WithLabelValues(string(it.typ)).Inc()
			log.Debug("relay.published", "attempt", attempt)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		reason, status := classify(err)
		r.m.publishFailures.WithLabelValues(reason).Inc()
		if permanent(status) {
			if status == 413 && !resized {
				log.Warn("relay.publish_resync_marker")
				it.bm.Data = resyncMarker(it.bm.Data)
				resized = true
				continue
			}
			log.Error("relay.publish_refused", "reason", reason, "err", err)
			r.giveUp(ctx, r.release(it), events.Event{Type: it.typ}, "refused by ably: "+err.Error(), log)
			return true
		}
		d := bo.NextBackOff()
		if status == 429 {
			d = max(d, time.Second)
		}
		log.Warn("relay.publish_retry", "attempt", attempt, "reason", reason, "delay", d.String(), "err", err)
		if retry.Sleep(ctx, d) != nil {
			return false
		}
	}
}

// release stops holding it and returns its latest delivery, to settle.
// Both together, so that a redelivery taken meanwhile is either held (and
// settled here) or taken as a new event.
func (r *ablyRelay) release(it *item) jetstream.Msg {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.held, it.seq)
	r.released++
	r.m.held.Set(float64(len(r.held)))
	return r.claims.Release(it.seq)
}

// giveUp keeps msg as a dead letter, then terminates it; if it cannot be
// stored it comes back to be given up then (see consume.DeadLetter).
func (r *ablyRelay) giveUp(ctx context.Context, msg jetstream.Msg, ev events.Event, reason string, log *slog.Logger) {
	opt := r.consume
	opt.Logger = log
	consume.DeadLetter(ctx, msg, ev, events.ConsumerRelay, errors.New(reason), opt)
}

// handBack returns every held event to JetStream and gives up the pin if
// this relay holds it (consume.Unpin): the next relay is pinned at once,
// receives them again, and publishes once it holds them all. A standby
// that took the pin from the relay holding the events would hand it to
// another standby whose gate stays shut until the first has published all
// it holds (through an Ably outage of one channel, every channel would
// wait for its end).
func (r *ablyRelay) handBack(stream jetstream.Stream, cons jetstream.Consumer) {
	r.mu.Lock()
	msgs := r.claims.ReleaseAll()
	clear(r.held)
	r.m.held.Set(0)
	pin := r.pin
	r.mu.Unlock()
	for _, m := range msgs {
		_ = m.Nak()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := consume.Unpin(ctx, stream, cons, events.ConsumerRelay, events.RelayGroup, pin); err != nil {
		r.log.Debug("relay.unpin", "err", err) // the pin already moved: nothing to give up
	}
	r.log.Info("relay.handed_back", "events", len(msgs))
}

// channelLimiter paces one channel's publishes with a margin under Ably's
// limit of perSecond messages: 80% of the rate and half of it as the burst.
// Ably counts messages as they arrive, and a loaded machine can delay one
// publish and not the next, so two publishes paced exactly at the limit can
// arrive closer together than they left. With this margin a publish can be
// held up about half a second before Ably would count a burst over its limit;
// a 42910 that still happens is retried after a back-off.
func channelLimiter(perSecond int) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(0.8*float64(perSecond)), max(1, perSecond/2))
}

// classify names a failed publish for metrics and says its HTTP status (0
// when none came back).
func classify(err error) (reason string, status int) {
	var ei *ably.ErrorInfo
	if errors.As(err, &ei) && ei.StatusCode != 0 {
		return "status_" + strconv.Itoa(ei.StatusCode), ei.StatusCode
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return "timeout", 0
	}
	return "network", 0
}

// permanent reports whether a retry of the same publish cannot succeed.
// Authentication and capability problems (401, 403) are configuration to
// fix, so the events wait for the fix rather than being lost.
func permanent(status int) bool {
	switch status {
	case 401, 403, 408, 429:
		return false
	}
	return status >= 400 && status < 500
}

// ablyLog sends ably-go's own log lines to slog at debug level (its
// warnings would duplicate the relay's).
type ablyLog struct{ log *slog.Logger }

func (l ablyLog) Printf(level ably.LogLevel, format string, v ...any) {
	l.log.Debug("ably.client", "level", level.String(), "msg", fmt.Sprintf(format, v...))
}
