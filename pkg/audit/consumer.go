package audit

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/retry"
)

// Consume writes the trail from cons (the audit consumer, Consumer) until
// ctx is done. It holds every event delivered, its claim renewed, and
// writes what it holds in rounds: each round files the events in stream
// order with WriteBatch (one read and one write per session document) and
// acks those whose document's write landed; the rest stay held for the
// next round, after a back-off (opt.Backoff of the failed rounds in a
// row), with the events delivered meanwhile. An event that cannot be read
// is given up (consume.DeadLetter).
//
// One Consume at a time reads (the consumer is pinned), so no two write a
// document at once. After the pin moves to it, it writes nothing until it
// holds every pending event: one held by a reader that died, or that lost
// the pin mid-round, comes back after AckWait or once that reader is done,
// and must not land after newer events of its session. What this does not
// cover: a reader cut off from NATS for longer than AckWait while it can
// still reach S3 may finish a round on events already redelivered to the
// next reader (a round is bounded by opt.Grace, default 10 s, against an
// AckWait of 30 s).
//
// At shutdown the round under way finishes (within opt.Grace), the events
// still held are handed back in stream order and the pin given up if this
// reader holds it (a stopping standby leaves it with the active reader).
// stream is cons's stream; cons is this reader's own handle (the pin is
// kept on it: two readers sharing one would both be pinned). Of opt it
// uses DeadLetters, Backoff, InProgressEvery and Grace; it logs on w's
// logger.
func (w *Writer) Consume(ctx context.Context, stream jetstream.Stream, cons jetstream.Consumer, opt consume.Options) error {
	ackWait := 30 * time.Second
	if info := cons.CachedInfo(); info != nil {
		ackWait = info.Config.AckWait
	}
	opt.Logger = w.log
	if opt.InProgressEvery <= 0 {
		opt.InProgressEvery = consume.HoldingEvery(ackWait)
	}
	opt = opt.WithDefaults(ackWait)
	b := &batcher{w: w, cons: cons, opt: opt, claims: consume.KeepClaims(opt.InProgressEvery),
		held: map[uint64]events.Event{}, more: make(chan struct{}, 1)}
	work, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.loop(work)
	}()
	err := consume.Deliver(ctx, cons, opt, b.take, jetstream.PullMaxMessages(BatchSize),
		jetstream.PullPriorityGroup(events.ConsumerAudit), jetstream.PullExpiry(events.PinnedPullExpiry))
	stop()
	<-done
	b.claims.Stop()
	b.handBack(stream)
	return err
}

// batcher is the state of one Consume.
type batcher struct {
	w      *Writer
	cons   jetstream.Consumer
	opt    consume.Options
	claims *consume.Claims // the held events' messages, by stream sequence

	mu   sync.Mutex
	held map[uint64]events.Event // by stream sequence
	pin  string                  // the pin id of the latest delivery
	open bool                    // every event pending under pin is held

	more chan struct{} // an event was taken
}

// take holds one delivered event until a round writes it.
func (b *batcher) take(d consume.Delivery) {
	seq := d.Meta.Sequence.Stream
	b.mu.Lock()
	if pin := d.Msg.Headers().Get("Nats-Pin-Id"); pin != b.pin {
		b.pin, b.open = pin, false
	}
	// A redelivery of an event still held keeps its place; it is settled
	// through the latest delivery.
	b.claims.Hold(seq, d.Msg)
	b.held[seq] = d.Event
	b.mu.Unlock()
	select {
	case b.more <- struct{}{}:
	default:
	}
}

// loop writes rounds until ctx is done.
func (b *batcher) loop(ctx context.Context) {
	var failed uint64
	for ctx.Err() == nil {
		b.mu.Lock()
		n := len(b.held)
		b.mu.Unlock()
		switch {
		case n == 0:
			select {
			case <-b.more:
			case <-ctx.Done():
			}
		case !b.ready(ctx, n):
			_ = retry.Sleep(ctx, 100*time.Millisecond) // the loop ends with ctx
		case b.round(ctx):
			failed = 0
		default:
			failed++
			_ = retry.Sleep(ctx, b.opt.Backoff(failed))
		}
	}
}

// ready reports whether every event pending on the consumer is held (n of
// them were, counted before asking; consume.CheckGate): none held is
// settled before a round. Once true it stays so until the pin moves. A
// reader that finds another pinned, or none (the pin was given up and
// nothing new came to assign it), hands back what it holds: it receives
// nothing more, and the pinned one would wait for those events.
func (b *batcher) ready(ctx context.Context, n int) bool {
	b.mu.Lock()
	open, pin := b.open, b.pin
	b.mu.Unlock()
	if open {
		return true
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	g, err := consume.CheckGate(ictx, b.cons, events.ConsumerAudit, pin, n)
	cancel()
	if err != nil {
		return false
	}
	if g.PinnedElsewhere {
		b.w.log.Info("audit.not_pinned", "events", len(b.giveBack(pin)))
		return false
	}
	if !g.AllHeld {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pin == pin {
		b.open = true
	}
	return b.open
}

// round writes every event held, in stream order, and settles each whose
// outcome is final. It reports whether none failed.
func (b *batcher) round(ctx context.Context) bool {
	b.mu.Lock()
	seqs := slices.Sorted(maps.Keys(b.held))
	evs := make([]events.Event, len(seqs))
	for i, s := range seqs {
		evs[i] = b.held[s]
	}
	b.mu.Unlock()
	// The round outlives ctx by at most the grace period: a write begun is
	// finished, and settled, rather than handed back half done.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.opt.Grace)
	defer cancel()
	errs := b.w.WriteBatch(wctx, evs)
	ok := true
	var perm *consume.PermanentError
	for i, seq := range seqs {
		switch {
		case errs[i] == nil:
			if msg := b.release(seq); msg != nil {
				_ = msg.Ack() // a lost ack redelivers an event that adds nothing
			}
		case errors.As(errs[i], &perm):
			if msg := b.release(seq); msg != nil {
				b.w.log.Error("audit.unreadable", append(evs[i].LogAttrs(), "err", errs[i])...)
				consume.DeadLetter(wctx, msg, evs[i], events.ConsumerAudit, errs[i], b.opt)
			}
		default:
			if ok {
				b.w.log.Warn("audit.write_failed", "events", len(seqs), "err", errs[i])
			}
			ok = false
		}
	}
	return ok
}

// release stops holding seq and returns its latest delivery.
func (b *batcher) release(seq uint64) jetstream.Msg {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.held, seq)
	return b.claims.Release(seq)
}

// giveBack returns every held event to JetStream, in stream order, unless
// the pin moved away from pin meanwhile (to this reader: it keeps them).
func (b *batcher) giveBack(pin string) []jetstream.Msg {
	b.mu.Lock()
	if b.pin != pin {
		b.mu.Unlock()
		return nil
	}
	msgs := b.claims.ReleaseAll()
	clear(b.held)
	b.mu.Unlock()
	for _, m := range msgs {
		_ = m.Nak()
	}
	return msgs
}

// handBack gives back every held event and gives up the pin if this
// reader holds it (consume.Unpin) so the next reader takes over at once.
func (b *batcher) handBack(stream jetstream.Stream) {
	b.mu.Lock()
	pin := b.pin
	b.mu.Unlock()
	msgs := b.giveBack(pin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := consume.Unpin(ctx, stream, b.cons, events.ConsumerAudit, events.ConsumerAudit, pin); err != nil {
		b.w.log.Debug("audit.unpin", "err", err) // not pinned: nothing to give up
	}
	b.w.log.Info("audit.handed_back", "events", len(msgs))
}
