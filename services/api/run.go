package api

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/jwtauth"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/outbox"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Run serves the API until ctx is done, then shuts down in order: stop
// taking requests, stop the outbox publisher, drain NATS, close Redis.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = ops.Logger(os.Stderr, "api", cfg.Common.LogLevel)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = ops.Registry()
	}

	conns, err := ops.Connect(ctx, cfg.Common, "api", log)
	if err != nil {
		return err
	}
	defer conns.Close()
	rdb, nc, objects := conns.Redis, conns.NATS, conns.Blob

	var verifier *jwtauth.Verifier
	var jwksCheck ops.Check
	if cfg.DevIssuer != nil {
		verifier = cfg.DevIssuer.Verifier()
	} else {
		jwks := jwtauth.NewJWKS(cfg.JWKSURL)
		verifier = jwtauth.NewVerifier(jwks, cfg.Issuer, cfg.Audience)
		jwksCheck = jwks.Ping
	}

	store := session.NewStore(rdb, session.Options{
		Prefix: cfg.Common.RedisPrefix, Names: cfg.Common.Names, Source: "/clinimg/api", MaxImages: cfg.MaxImages,
		MaxPhones: cfg.MaxPhones,
	})
	waiter, err := NewWaiter(nc, cfg.Common.Names, log)
	if err != nil {
		return err
	}
	defer waiter.Close()

	checks := conns.Checks()
	if jwksCheck != nil {
		checks["jwks"] = jwksCheck
	}
	srv := NewServer(cfg, Deps{
		Store: store, Redis: rdb, Objects: objects, Verifier: verifier, Waiter: waiter,
		Checks: checks, Registry: reg, Logger: log,
	})
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clinimg_outbox_depth", Help: "Events waiting in the Redis outbox.",
	}, func() float64 {
		n, _ := outbox.Depth(context.Background(), rdb, store.Keys.Outbox())
		return float64(n)
	}))

	pub, err := outbox.New(rdb, nc, store.Keys.Outbox(), conns.Name, log, outbox.Options{})
	if err != nil {
		return err
	}
	pub.OnPublished = func(t events.Type, dup bool) {
		srv.metrics.published.WithLabelValues("api", string(t), strconv.FormatBool(dup)).Inc()
	}

	log.Info("api.start", "addr", cfg.Addr, "ops_addr", cfg.Common.OpsAddr, "public_url", cfg.PublicURL, "realtime", string(cfg.Realtime.Mode))

	// HTTP first to stop on shutdown; the publisher runs until the HTTP
	// servers have stopped so every accepted change is published.
	httpCtx, stopHTTP := context.WithCancel(ctx)
	defer stopHTTP()
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- err
				stopHTTP()
			}
		}()
	}
	var httpWG sync.WaitGroup
	httpWG.Add(2)
	run(func() error {
		defer httpWG.Done()
		return ops.Server{Addr: cfg.Addr, Handler: srv.Router(), Limits: cfg.HTTP, Ready: cfg.Ready}.Run(httpCtx)
	})
	run(func() error {
		defer httpWG.Done()
		return ops.Server{Addr: cfg.Common.OpsAddr, Handler: ops.Handler(reg, checks), Ready: cfg.OpsReady}.Run(httpCtx)
	})
	run(func() error { return pub.Run(pubCtx) })

	httpWG.Wait()
	stopPub()
	wg.Wait()
	conns.Drain()
	log.Info("api.stopped")
	close(errc)
	return errors.Join(collect(errc)...)
}

func collect(errc <-chan error) []error {
	var out []error
	for err := range errc {
		out = append(out, err)
	}
	return out
}
