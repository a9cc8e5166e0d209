package relay

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/ably/ably-go/ably"
	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// maxDrain is how many queued events one publisher takes at once when they
// pile up; they are then grouped by channel and sent in batches.
const maxDrain = 200

// ablyRelay publishes the durable consumer's events to Ably.
type ablyRelay struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics
	rest *ably.REST
}

// item is one event on its way: the JetStream message to ack and what it
// becomes on the channel.
type item struct {
	msg jetstream.Msg
	bm  browserMessage
	typ events.Type
}

func newAblyRelay(cfg Config, log *slog.Logger, m *metrics) (*ablyRelay, error) {
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
	return &ablyRelay{cfg: cfg, log: log, m: m, rest: rest}, nil
}

// run consumes until ctx is done. Each user's events go to one of
// cfg.Publishers publishers, so a channel's events keep their order and a
// slow channel holds up only its share.
func (r *ablyRelay) run(ctx context.Context, cons jetstream.Consumer) error {
	iter, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("consume relay: %w", err)
	}
	go func() {
		<-ctx.Done()
		iter.Stop()
	}()

	queues := make([]chan item, r.cfg.Publishers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan item, maxDrain)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.publisher(ctx, queues[i])
		}()
	}
	defer func() {
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}()

	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			r.log.Warn("relay.next", "err", err)
			continue
		}
		ev, err := events.Decode(msg.Data())
		if err != nil {
			r.log.Error("relay.bad_event", "subject", msg.Subject(), "err", err)
			_ = msg.TermWithReason("undecodable")
			continue
		}
		bm, ok, err := toBrowser(ev)
		if err != nil {
			r.log.Error("relay.bad_data", "event_id", ev.ID, "event_type", string(ev.Type), "err", err)
			_ = msg.TermWithReason("undecodable data")
			continue
		}
		if !ok {
			_ = msg.Ack()
			continue
		}
		r.log.Debug("relay.event", ev.LogAttrs()...)
		h := fnv.New32a()
		h.Write([]byte(ev.Subject))
		select {
		case queues[int(h.Sum32()%uint32(len(queues)))] <- item{msg: msg, bm: bm, typ: ev.Type}:
		case <-ctx.Done():
			_ = msg.Nak()
			return nil
		}
	}
}

// publisher sends its queue's events: whatever has piled up is taken at
// once, grouped by channel in order, and sent in batches.
func (r *ablyRelay) publisher(ctx context.Context, q <-chan item) {
	limiters := map[string]*limiter{}
	lastSweep := time.Now()
	for first := range q {
		batch := []item{first}
	drain:
		for len(batch) < maxDrain {
			select {
			case it, ok := <-q:
				if !ok {
					break drain
				}
				batch = append(batch, it)
			default:
				break drain
			}
		}
		if ctx.Err() != nil {
			nakAll(batch)
			continue
		}
		for _, group := range byChannel(batch) {
			lim := limiters[group[0].bm.Channel]
			if lim == nil {
				lim = &limiter{Limiter: channelLimiter(r.cfg.ChannelRate)}
				limiters[group[0].bm.Channel] = lim
			}
			lim.used = time.Now()
			for _, chunk := range chunks(group, lim.Burst()) {
				r.deliver(ctx, lim.Limiter, chunk, false)
			}
		}
		// A limiter idle for a second is full again: forget it.
		if time.Since(lastSweep) > time.Minute {
			for ch, l := range limiters {
				if time.Since(l.used) > 10*time.Second {
					delete(limiters, ch)
				}
			}
			lastSweep = time.Now()
		}
	}
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

type limiter struct {
	*rate.Limiter
	used time.Time
}

// byChannel groups items by channel, channels in order of first
// appearance, items in order.
func byChannel(batch []item) [][]item {
	idx := map[string]int{}
	var groups [][]item
	for _, it := range batch {
		i, ok := idx[it.bm.Channel]
		if !ok {
			i = len(groups)
			idx[it.bm.Channel] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], it)
	}
	return groups
}

// chunks splits one channel's items into publishes of at most max messages
// and MaxMessageBytes - 2 KiB all together.
func chunks(items []item, max int) [][]item {
	var out [][]item
	var cur []item
	size := 0
	for _, it := range items {
		s := it.bm.size()
		if len(cur) > 0 && (len(cur) >= max || size+s > maxDataBytes) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, it)
		size += s
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// messageIDs are the Ably ids of a publish: the event id for one message,
// "<first event id>:<index>" for several (Ably's rule). Retries of the same
// publish reuse them, so Ably drops a repeat.
func messageIDs(chunk []item) []string {
	if len(chunk) == 1 {
		return []string{chunk[0].bm.EventID}
	}
	ids := make([]string, len(chunk))
	for i := range chunk {
		ids[i] = chunk[0].bm.EventID + ":" + strconv.Itoa(i)
	}
	return ids
}

// deliver publishes one chunk, retrying until Ably accepts it, then acks
// its messages. A publish Ably refuses for good is split into single
// messages; a single message it refuses is terminated (logged), except one
// too large, which is sent again as a resync marker.
func (r *ablyRelay) deliver(ctx context.Context, lim *rate.Limiter, chunk []item, resized bool) {
	ch := chunk[0].bm.Channel
	log := r.log.With("channel", ch, "messages", len(chunk))
	if err := lim.WaitN(ctx, len(chunk)); err != nil {
		nakAll(chunk)
		return
	}
	ids := messageIDs(chunk)
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(10*time.Second),
		backoff.WithMaxElapsedTime(0),
	)
	lastProgress := time.Now()
	channel := r.rest.Channels.Get(ch)
	for attempt := 1; ; attempt++ {
		msgs := make([]*ably.Message, len(chunk))
		for i, it := range chunk {
			msgs[i] = &ably.Message{ID: ids[i], Name: it.bm.Name, Data: it.bm.Data}
		}
		pctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
		start := time.Now()
		err := channel.PublishMultiple(pctx, msgs)
		cancel()
		if err == nil {
			r.m.publishSeconds.Observe(time.Since(start).Seconds())
			r.m.batchSize.Observe(float64(len(chunk)))
			for _, it := range chunk {
				if aerr := it.msg.Ack(); aerr != nil {
					// Redelivered later and published again under the same
					// id when batched the same way: Ably drops the repeat.
					log.Warn("relay.ack_failed", "event_id", it.bm.EventID, "err", aerr)
				}
				r.m.relayed.WithLabelValues(string(it.typ)).Inc()
			}
			log.Debug("relay.published", "attempt", attempt, "first_event_id", chunk[0].bm.EventID)
			return
		}
		if ctx.Err() != nil {
			nakAll(chunk)
			return
		}
		reason, status := classify(err)
		r.m.publishFailures.WithLabelValues(reason).Inc()
		if permanent(status) {
			switch {
			case len(chunk) > 1:
				log.Warn("relay.publish_split", "reason", reason, "err", err)
				for _, it := range chunk {
					r.deliver(ctx, lim, []item{it}, resized)
				}
			case status == 413 && !resized:
				log.Warn("relay.publish_resync_marker", "event_id", chunk[0].bm.EventID)
				one := chunk[0]
				one.bm.Data = resyncMarker(one.bm.Data)
				r.deliver(ctx, lim, []item{one}, true)
			default:
				log.Error("relay.publish_refused", "event_id", chunk[0].bm.EventID, "reason", reason, "err", err)
				_ = chunk[0].msg.TermWithReason("refused by ably: " + reason)
			}
			return
		}
		d := bo.NextBackOff()
		if status == 429 {
			d = max(d, time.Second)
		}
		log.Warn("relay.publish_retry", "attempt", attempt, "reason", reason, "delay", d.String(), "err", err)
		if time.Since(lastProgress) > 5*time.Second {
			for _, it := range chunk {
				_ = it.msg.InProgress()
			}
			lastProgress = time.Now()
		}
		sleepCtx(ctx, d)
		if ctx.Err() != nil {
			nakAll(chunk)
			return
		}
	}
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

func nakAll(items []item) {
	for _, it := range items {
		_ = it.msg.Nak()
	}
}

// ablyLog sends ably-go's own log lines to slog at debug level (its
// warnings would duplicate the relay's).
type ablyLog struct{ log *slog.Logger }

func (l ablyLog) Printf(level ably.LogLevel, format string, v ...any) {
	l.log.Debug("ably.client", "level", level.String(), "msg", fmt.Sprintf(format, v...))
}
