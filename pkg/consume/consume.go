// Package consume is the one adapter between JetStream and a consuming
// service. Run runs a service's business logic, a plain
// func(ctx, events.Event) error that knows nothing of NATS, on a durable
// pull consumer: it turns the result into Ack, NakWithDelay or Term, keeps
// long work claimed with InProgress, stores a message whose last delivery
// failed (or that the logic refused for good) as a dead letter, and at
// shutdown lets the work in flight finish within a grace period and hands
// the rest back to JetStream.
//
// Run is built from three pieces a consumer with its own settling (the
// relay, which holds events until Ably takes them) uses directly: Deliver,
// the delivery loop (pull, decode, drain at shutdown); Claims, which keeps
// the claims of held messages renewed in stream order; and DeadLetter, the
// poison queue (store, the service's own step, then Term, or keep the
// message if either fails). Readers of a pinned priority group (the relay,
// the audit trail) share CheckGate and Unpin.
package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"

	"github.com/clinicalimages/clinimg/pkg/retry"
)

// Handler is a service's logic for one event.
type Handler func(ctx context.Context, ev events.Event) error

// PermanentError marks a failure that a retry cannot fix: the message is
// terminated, not redelivered.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err as a PermanentError.
func Permanent(err error) error { return &PermanentError{Err: err} }

// RetryError asks for redelivery after a given delay (for example an ALEX
// Retry-After).
type RetryError struct {
	Err   error
	After time.Duration
}

func (e *RetryError) Error() string { return fmt.Sprintf("retry after %s: %v", e.After, e.Err) }
func (e *RetryError) Unwrap() error { return e.Err }

// RetryAfter wraps err as a RetryError.
func RetryAfter(err error, d time.Duration) error { return &RetryError{Err: err, After: d} }

// Options tune Run. Zero values take the defaults named. Deliver and
// DeadLetter use only DeadLetters, DeadLetter, Logger and OnResult.
type Options struct {
	// Workers is how many messages are handled at once (default 1).
	Workers int
	// InProgressEvery is how often the claim of a running handler's
	// message, or of one waiting for a worker, is renewed (default a third
	// of the consumer's AckWait, at least 1 s; keep it under half: a
	// message that waited goes up to two intervals between renewals).
	InProgressEvery time.Duration
	// Backoff is the redelivery delay after the n-th failed delivery
	// (default 1 s doubling to at most 1 min).
	Backoff func(delivered uint64) time.Duration
	// DeadLetters stores a message whose last allowed delivery failed, or
	// that the handler refused for good, before it is terminated; nil only
	// logs it.
	DeadLetters *deadletter.Store
	// DeadLetter, if set, runs once the message is stored as a dead letter:
	// the service's own consequences (tell the session). An error keeps the
	// message for another try.
	DeadLetter func(ctx context.Context, ev events.Event, reason string) error
	// Grace is how long handlers in flight may run once Run's context is
	// done (default 10 s); then their context ends and what did not finish
	// goes back to JetStream.
	Grace time.Duration
	// Logger is the service's logger.
	Logger *slog.Logger
	// OnResult observes each outcome ("ack", "nak", "term", "dead",
	// "handed_back") for metrics.
	OnResult func(t events.Type, outcome string)
}

// Run consumes until ctx is done, then stops taking messages, gives the
// handlers in flight opt.Grace to finish, ends their context, and returns
// once they have. A message whose handler did not finish, or that arrived
// after the stop, is handed back (Nak) for another process.
func Run(ctx context.Context, c jetstream.Consumer, h Handler, opt Options) error {
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer info: %w", err)
	}
	opt = opt.WithDefaults(info.Config.AckWait)
	// work is the handlers' context: it outlives ctx by the grace period.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	sem := make(chan struct{}, opt.Workers)
	var wg sync.WaitGroup
	idle := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-idle:
			return
		}
		t := time.NewTimer(opt.Grace)
		defer t.Stop()
		select {
		case <-t.C:
			opt.Logger.Warn("consume.grace_over", "consumer", info.Name)
			stopWork()
		case <-idle:
		}
	}()
	defer func() {
		wg.Wait()
		close(idle)
	}()
	return Deliver(ctx, c, opt, func(d Delivery) {
		if ctx.Err() != nil {
			// Delivered after the stop: not started, handed back.
			_ = d.Msg.Nak()
			observe(opt, d.Event.Type, "handed_back")
			return
		}
		waitForWorker(sem, d, opt.InProgressEvery)
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			handle(work, ctx, d, h, opt, info.Name, info.Config.MaxDeliver)
		}()
	}, jetstream.PullMaxMessages(opt.Workers))
}

// waitForWorker takes a worker's slot for d, keeping d's claim renewed
// while every worker is busy: d is delivered already, and if it waited out
// the AckWait unclaimed JetStream would hand it to another process, even
// once its handler runs (whose first renewal comes an interval after it
// starts). Between the last renewal here and the handler's first there are
// at most two intervals.
func waitForWorker(sem chan struct{}, d Delivery, every time.Duration) {
	select {
	case sem <- struct{}{}:
		return
	default:
	}
	claims := KeepClaims(every)
	claims.Hold(d.Meta.Sequence.Stream, d.Msg)
	sem <- struct{}{}
	claims.Stop() // no renewal under way once the handler may settle d
}

// HoldingEvery is how often a reader that holds many messages at once
// (the relay, the audit trail) renews their claims on a consumer with
// ackWait: a quarter of it, at least every half second.
func HoldingEvery(ackWait time.Duration) time.Duration {
	return max(ackWait/4, 500*time.Millisecond)
}

// WithDefaults fills opt's zero values for a consumer with ackWait.
func (opt Options) WithDefaults(ackWait time.Duration) Options {
	if opt.Workers <= 0 {
		opt.Workers = 1
	}
	if opt.InProgressEvery <= 0 {
		opt.InProgressEvery = max(ackWait/3, time.Second)
	}
	if opt.Backoff == nil {
		opt.Backoff = func(n uint64) time.Duration { return retry.Delay(n, time.Second, time.Minute) }
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Grace <= 0 {
		opt.Grace = 10 * time.Second
	}
	return opt
}

// handle runs h on one delivery with ctx (the work context), its claim
// kept meanwhile, and settles it; stopping is done once the consumer was
// told to stop.
func handle(ctx, stopping context.Context, d Delivery, h Handler, opt Options, consumer string, maxDeliver int) {
	msg, ev := d.Msg, d.Event
	log := opt.Logger.With(ev.LogAttrs()...)
	opt.Logger = log // for DeadLetter
	if ev.TraceParent != "" {
		ctx = events.ContextWithTraceParent(ctx, events.ChildTraceParent(ev.TraceParent))
	}
	delivered := d.Meta.NumDelivered

	claims := KeepClaims(opt.InProgressEvery)
	claims.Hold(d.Meta.Sequence.Stream, msg)
	err := h(ctx, ev)
	claims.Stop()

	var perm *PermanentError
	var retry *RetryError
	switch {
	case err != nil && stopping.Err() != nil && ctx.Err() != nil:
		// Cut off by the end of the grace period: another process takes it.
		log.Info("consume.handed_back", "delivered", delivered, "err", err)
		_ = msg.Nak()
		observe(opt, ev.Type, "handed_back")
	case err == nil:
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		aerr := msg.DoubleAck(actx)
		cancel()
		if aerr != nil {
			log.Warn("consume.ack_failed", "err", aerr)
		}
		observe(opt, ev.Type, "ack")
		log.Debug("consume.acked", "delivered", delivered)
	case errors.As(err, &perm):
		log.Error("consume.permanent", "err", err)
		DeadLetter(ctx, msg, ev, consumer, err, opt)
	case maxDeliver > 0 && delivered >= uint64(maxDeliver):
		log.Error("consume.exhausted", "delivered", delivered, "err", err)
		DeadLetter(ctx, msg, ev, consumer, err, opt)
	default:
		delay := opt.Backoff(delivered)
		if errors.As(err, &retry) && retry.After > delay {
			delay = retry.After
		}
		log.Warn("consume.retry", "delivered", delivered, "delay", delay.String(), "err", err)
		_ = msg.NakWithDelay(delay)
		observe(opt, ev.Type, "nak")
	}
}

func observe(opt Options, t events.Type, outcome string) {
	if opt.OnResult != nil {
		opt.OnResult(t, outcome)
	}
}
