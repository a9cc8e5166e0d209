package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// Delivery is one message as Deliver hands it over: decoded, with its
// JetStream metadata (delivery count, stream sequence).
type Delivery struct {
	Msg   jetstream.Msg
	Event events.Event
	Meta  *jetstream.MsgMetadata
}

// Deliver takes c's messages, pulled with pull, and hands each to take, in
// the order they arrive, until ctx is done; then it drains the pull (what
// the client already received still comes out and is handed over) and
// returns once the last is. A message that cannot be decoded is given up
// (DeadLetter, with opt's store and logger) and not handed over; one
// without metadata is terminated. take runs on Deliver's goroutine: the
// next message waits for it. Run is Deliver with workers behind take; the
// relay is Deliver with its own holding and ordering behind it.
func Deliver(ctx context.Context, c jetstream.Consumer, opt Options, take func(Delivery), pull ...jetstream.PullMessagesOpt) error {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
		opt.Logger = log
	}
	var name string
	if info := c.CachedInfo(); info != nil {
		name = info.Name
	}
	iter, err := c.Messages(pull...)
	if err != nil {
		return fmt.Errorf("consume %s: %w", name, err)
	}
	// Drain, not Stop: nothing received is dropped, so nothing waits for
	// AckWait to come back.
	closed := make(chan struct{})
	defer close(closed)
	go func() {
		select {
		case <-ctx.Done():
			iter.Drain()
		case <-closed:
		}
	}()
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			log.Warn("consume.next", "consumer", name, "err", err)
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			log.Error("consume.bad_message", "consumer", name, "subject", msg.Subject(), "err", err)
			_ = msg.TermWithReason("no metadata")
			continue
		}
		ev, err := events.Decode(msg.Data())
		if err != nil {
			log.Error("consume.bad_event", "consumer", name, "subject", msg.Subject(), "err", err)
			DeadLetter(ctx, msg, events.Event{}, name, fmt.Errorf("undecodable: %w", err), opt)
			continue
		}
		take(Delivery{Msg: msg, Event: ev, Meta: meta})
	}
}

// DeadLetter gives msg up, delivered to consumer and decoded as ev (zero if
// it could not be): it stores it on opt.DeadLetters with cause, runs
// opt.DeadLetter (the service's own step, for a decoded event only), then
// terminates it. If storing or the step fails, the message is kept
// (NakWithDelay) to come back and be given up then; the failure is logged
// on opt.Logger. Both run even once ctx is done: a message is not lost to
// a shutdown.
func DeadLetter(ctx context.Context, msg jetstream.Msg, ev events.Event, consumer string, cause error, opt Options) {
	ctx = context.WithoutCancel(ctx)
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opt.DeadLetters != nil {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := opt.DeadLetters.Put(pctx, consumer, msg, cause.Error())
		cancel()
		if err != nil {
			log.Error("consume.dead_letter_failed", "err", err)
			_ = msg.NakWithDelay(5 * time.Second)
			return
		}
	}
	if opt.DeadLetter != nil && ev.ID != "" {
		if err := opt.DeadLetter(ctx, ev, cause.Error()); err != nil {
			log.Error("consume.dead_letter_failed", "err", err)
			_ = msg.NakWithDelay(5 * time.Second)
			return
		}
	}
	_ = msg.TermWithReason("dead-lettered")
	observe(opt, ev.Type, "dead")
}
