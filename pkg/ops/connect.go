package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/outbox"

	"github.com/clinicalimages/clinimg/pkg/retry"
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

// ProcessName is service-host-pid, unique to this process.
func ProcessName(service string) string {
	host, _ := os.Hostname()
	return service + "-" + host + "-" + strconv.Itoa(os.Getpid())
}

// Connect opens every connection the service needs, waiting with backoff
// for each dependency that is not up yet (logged, the service not ready
// meanwhile) until ctx ends, and ensures the event stream. The group
// drains NATS and closes Redis last when it stops (see Conns.Close). On
// error nothing is left open.
func Connect(g *Group, c config.Common, service string, log *slog.Logger) (*Conns, error) {
	ctx := g.Context()
	cs := &Conns{Name: ProcessName(service)}
	var err error
	if cs.Redis, err = Redis(ctx, c.RedisURL, log); err != nil {
		return nil, err
	}
	if cs.NATS, cs.JS, err = JetStream(ctx, c, cs.Name, log); err != nil {
		cs.Redis.Close()
		return nil, err
	}
	closeAll := func() { cs.NATS.Close(); cs.Redis.Close() }
	if cs.Blob, err = blob.Open(ctx, c.S3); err != nil {
		closeAll()
		return nil, err
	}
	if err := WaitFor(ctx, log, "s3", cs.Blob.Ping); err != nil {
		closeAll()
		return nil, err
	}
	g.Finally("connections", cs.Close)
	return cs, nil
}

// Publish runs the outbox publisher of the session store's outbox key in
// g's flush stage (after the work stops, it publishes what is left);
// onPublished, if set, observes each event.
func (cs *Conns) Publish(g *Group, outboxKey string, log *slog.Logger, onPublished func(events.Type, bool)) error {
	pub, err := outbox.New(cs.Redis, cs.NATS, outboxKey, cs.Name, log, outbox.Options{})
	if err != nil {
		return err
	}
	pub.OnPublished = onPublished
	g.Go(StageFlush, "outbox", pub.Run)
	return nil
}

// Checks are the readiness checks of the connections.
func (cs *Conns) Checks() map[string]Check {
	return map[string]Check{
		"redis": func(ctx context.Context) error { return cs.Redis.Ping(ctx).Err() },
		"nats":  NATSCheck(cs.NATS),
		"s3":    cs.Blob.Ping,
	}
}

// Close drains NATS, waiting until it has closed (what was published is
// flushed, subscriptions have delivered what they hold), then closes
// Redis: the last steps of every service's shutdown.
func (cs *Conns) Close(ctx context.Context) error {
	err := DrainNATS(ctx, cs.NATS)
	if rerr := cs.Redis.Close(); rerr != nil {
		err = errors.Join(err, fmt.Errorf("close redis: %w", rerr))
	}
	return err
}

// Redis opens a client from a redis:// or rediss:// URL and waits until it
// answers.
func Redis(ctx context.Context, url string, log *slog.Logger) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	rdb := redis.NewClient(opt)
	if err := WaitFor(ctx, log, "redis", func(ctx context.Context) error { return rdb.Ping(ctx).Err() }); err != nil {
		rdb.Close()
		return nil, err
	}
	return rdb, nil
}

// NATSAuthOptions are the connection options a: a credentials file or an
// NKey seed file, a private CA, a client certificate. A file named that
// cannot be read is an error here, before any connection is tried.
func NATSAuthOptions(a config.NATSAuth) ([]nats.Option, error) {
	var opts []nats.Option
	check := func(setting, path string) error {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s: %w", setting, err)
		}
		return nil
	}
	if a.CredsFile != "" {
		if err := check("NATS_CREDS", a.CredsFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	}
	if a.NKeySeed != "" {
		o, err := nats.NkeyOptionFromSeed(a.NKeySeed)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY_SEED: %w", err)
		}
		opts = append(opts, o)
	}
	if a.CAFile != "" {
		if err := check("NATS_TLS_CA", a.CAFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.RootCAs(a.CAFile))
	}
	if a.CertFile != "" {
		if err := check("NATS_TLS_CERT", a.CertFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.ClientCert(a.CertFile, a.KeyFile))
	}
	return opts, nil
}

// JetStream connects to NATS (reconnecting for ever, named name), waits
// until it is connected and the event stream exists with c's settings
// (created or updated), and returns the connection and its JetStream
// context. A cluster still electing its leaders answers errors for a
// while: they are waited out the same way.
func JetStream(ctx context.Context, c config.Common, name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	auth, err := NATSAuthOptions(c.NATSAuth)
	if err != nil {
		return nil, nil, err
	}
	nc, err := nats.Connect(c.NATSURL, append(auth,
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats.disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("nats.reconnected") }),
	)...)
	if err != nil {
		return nil, nil, fmt.Errorf("nats connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	err = WaitFor(ctx, log, "nats", func(ctx context.Context) error {
		if !nc.IsConnected() {
			return errors.New("not connected")
		}
		if _, err := events.Ensure(ctx, js, c.Names, c.Replicas); err != nil {
			return err
		}
		return deadletter.Ensure(ctx, js, c.Names, c.Replicas)
	})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// Consumer waits until the service's durable consumer exists with its
// settings (see events.EnsureConsumer).
func Consumer(ctx context.Context, log *slog.Logger, js jetstream.JetStream, names events.Names, c events.Consumer) (jetstream.Consumer, error) {
	var cons jetstream.Consumer
	err := WaitFor(ctx, log, "consumer "+c.Name, func(ctx context.Context) error {
		var err error
		cons, err = events.EnsureConsumer(ctx, js, names, c)
		return err
	})
	return cons, err
}

// NATSCheck is the readiness check of a NATS connection.
func NATSCheck(nc *nats.Conn) Check {
	return func(context.Context) error {
		if !nc.IsConnected() {
			return errors.New("nats not connected")
		}
		return nil
	}
}

// DrainNATS drains nc (subscriptions deliver what they hold, what was
// published is flushed) and waits until it has closed, or until ctx ends
// and it is closed at once.
func DrainNATS(ctx context.Context, nc *nats.Conn) error {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if nc.IsClosed() {
		return nil
	}
	if err := nc.Drain(); err != nil {
		nc.Close()
		return fmt.Errorf("drain nats: %w", err)
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		nc.Close()
		return fmt.Errorf("drain nats: %w", ctx.Err())
	}
}

// WaitFor calls try until it succeeds or ctx ends, backing off from 100 ms
// to 5 s between attempts and logging what it waits for (at most every
// 10 s). It returns ctx's error if ctx ended first.
func WaitFor(ctx context.Context, log *slog.Logger, what string, try func(ctx context.Context) error) error {
	bo := retry.Backoff(100*time.Millisecond, 5*time.Second)
	var logged time.Time
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := try(actx)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info("ops.dependency_up", "dependency", what, "attempts", attempt)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		}
		if time.Since(logged) > 10*time.Second {
			log.Warn("ops.waiting_for_dependency", "dependency", what, "attempt", attempt, "err", err)
			logged = time.Now()
		}
		if err := retry.Sleep(ctx, bo.NextBackOff()); err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
	}
}
