package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/outbox"
)

// Conns are the connections a service that changes sessions opens: Redis,
// NATS with JetStream (the event stream ensured), and the photo bucket.
type Conns struct {
	Redis *redis.Client
	NATS  *nats.Conn
	JS    jetstream.JetStream
	Blob  *blob.Store
	// Name is this process's name, service-host-pid: its NATS connection
	// name and its outbox consumer name.
	Name string
}

// Connect opens every connection service needs, in order, and ensures the
// event stream. On error nothing is left open. The caller calls Close.
func Connect(ctx context.Context, c config.Common, service string, log *slog.Logger) (*Conns, error) {
	host, _ := os.Hostname()
	cs := &Conns{Name: service + "-" + host + "-" + strconv.Itoa(os.Getpid())}
	var err error
	if cs.Redis, err = Redis(ctx, c.RedisURL); err != nil {
		return nil, err
	}
	if cs.NATS, err = NATS(c.NATSURL, cs.Name, log); err != nil {
		cs.Close()
		return nil, err
	}
	if cs.JS, err = jetstream.New(cs.NATS); err != nil {
		cs.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if _, err = events.Ensure(ctx, cs.JS, c.Names, c.Replicas); err != nil {
		cs.Close()
		return nil, err
	}
	if cs.Blob, err = blob.Open(ctx, c.S3); err != nil {
		cs.Close()
		return nil, err
	}
	return cs, nil
}

// Checks are the readiness checks of the connections.
func (cs *Conns) Checks() map[string]Check {
	return map[string]Check{
		"redis": func(ctx context.Context) error { return cs.Redis.Ping(ctx).Err() },
		"nats": func(context.Context) error {
			if !cs.NATS.IsConnected() {
				return errors.New("nats not connected")
			}
			return nil
		},
		"s3": cs.Blob.Ping,
	}
}

// Drain lets NATS deliver what is in flight, then closes it.
func (cs *Conns) Drain() {
	if cs.NATS != nil {
		_ = cs.NATS.Drain()
	}
}

// Close closes NATS and Redis.
func (cs *Conns) Close() {
	if cs.NATS != nil {
		cs.NATS.Close()
	}
	if cs.Redis != nil {
		cs.Redis.Close()
	}
}

// Worker describes a service whose work is consuming events and whose
// session changes reach JetStream through the outbox.
type Worker struct {
	Service  string
	OpsAddr  string
	Registry *prometheus.Registry
	Checks   map[string]Check
	// Outbox is the session store's outbox stream key.
	Outbox string
	// Instrument, if set, observes the outbox publisher.
	Instrument func(*outbox.Publisher)
	Logger     *slog.Logger
	// Work runs until ctx is done (or fails).
	Work func(ctx context.Context) error
}

// Run runs w: the ops endpoints and an outbox publisher beside w.Work. When
// the work stops it shuts down in order: give the publisher up to 2 s to
// move the last events (the outbox is shared, so it may never be empty),
// stop it, stop the ops server, drain NATS.
func (cs *Conns) Run(ctx context.Context, w Worker) error {
	pub, err := outbox.New(cs.Redis, cs.NATS, w.Outbox, cs.Name, w.Logger, outbox.Options{})
	if err != nil {
		return err
	}
	if w.Instrument != nil {
		w.Instrument(pub)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := Serve(ctx, w.OpsAddr, Handler(w.Registry, w.Checks), nil); err != nil {
			errc <- err
			stop()
		}
	}()
	go func() {
		defer wg.Done()
		if err := pub.Run(pubCtx); err != nil {
			errc <- err
		}
	}()

	werr := w.Work(ctx)

	flush, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	for {
		n, err := outbox.Depth(flush, cs.Redis, w.Outbox)
		if err != nil || n == 0 {
			break
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-flush.Done():
		case <-t.C:
		}
		t.Stop()
		if flush.Err() != nil {
			break
		}
	}
	cancel()
	stopPub()
	stop()
	wg.Wait()
	cs.Drain()
	w.Logger.Info(w.Service + ".stop")
	if werr != nil {
		return werr
	}
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}
