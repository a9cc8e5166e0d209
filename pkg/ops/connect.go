package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/events"
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
