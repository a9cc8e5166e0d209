package api

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/audit"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/jwtauth"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/outbox"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Run serves the API until ctx is done. It serves /healthz, /readyz and
// /metrics on the operations port at once and waits for Redis, NATS and S3
// (not ready meanwhile), then serves the API. It shuts down in the order of
// ops.Group: stop taking requests (those in flight get the grace period),
// publish what is left in the outbox, drain NATS and wait for it to close,
// close Redis.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = ops.Logger(os.Stderr, "api", cfg.Common.LogLevel)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = ops.Registry()
	}
	g := ops.NewGroup(ctx, log, cfg.Common.Grace)
	g.ServeOps(cfg.Common.OpsAddr, reg, cfg.OpsReady)

	conns, err := ops.Connect(g, cfg.Common, "api", log)
	if err != nil {
		return g.Stop(err)
	}
	rdb := conns.Redis

	checks := conns.Checks()
	verifier := desktopVerifier(cfg, checks)

	store := session.NewStore(rdb, session.Options{
		Prefix: cfg.Common.RedisPrefix, Names: cfg.Common.Names, Source: "/clinimg/api", MaxImages: cfg.MaxImages,
		MaxPhones: cfg.MaxPhones, RequireConsent: cfg.ConsentRequired, MaxUploads: cfg.MaxUploads,
		SessionTTL: cfg.Common.SessionTTL,
	})
	// The waiter's subscriptions end with the NATS connection's drain.
	waiter, err := NewWaiter(conns.NATS, cfg.Common.Names, log)
	if err != nil {
		return g.Stop(err)
	}
	trail := audit.NewStore(conns.Blob)
	deps := Deps{
		Store: store, Redis: rdb, Objects: conns.Blob, Verifier: verifier, Waiter: waiter, Audit: trail,
		Registry: reg, Logger: log,
	}
	if cfg.ALEX != nil {
		if deps.ALEX, err = earlierPhotos(*cfg.ALEX, log); err != nil {
			return g.Stop(err)
		}
	}
	srv := NewServer(cfg, deps)
	if err := writeAudit(g, conns, cfg, trail, log); err != nil {
		return g.Stop(err)
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clinimg_outbox_depth", Help: "Events waiting in the Redis outbox.",
	}, func() float64 {
		n, _ := outbox.Depth(context.Background(), rdb, store.Keys.Outbox())
		return float64(n)
	}))
	published := func(t events.Type, dup bool) {
		srv.metrics.published.WithLabelValues("api", string(t), strconv.FormatBool(dup)).Inc()
	}
	if err := conns.Publish(g, store.Keys.Outbox(), log, published); err != nil {
		return g.Stop(err)
	}
	g.Go(ops.StageWork, "sweep", sweeper{store: store, objects: conns.Blob, every: cfg.SweepInterval, log: log}.Run)
	g.Go(ops.StageWork, "http", ops.Server{Addr: cfg.Addr, Handler: srv.Router(), Limits: cfg.HTTP, Ready: cfg.Ready, Grace: g.Grace()}.Run)
	g.Ready(checks)
	log.Info("api.start", "addr", cfg.Addr, "ops_addr", cfg.Common.OpsAddr, "public_url", cfg.PublicURL, "realtime", string(cfg.Realtime.Mode),
		"earlier_photos", cfg.ALEX != nil)
	return g.Wait()
}

// desktopVerifier checks desktop tokens: the development issuer's, else
// the identity provider's, whose JWKS joins the readiness checks.
func desktopVerifier(cfg Config, checks map[string]ops.Check) *jwtauth.Verifier {
	if cfg.DevIssuer != nil {
		return cfg.DevIssuer.Verifier()
	}
	jwks := jwtauth.NewJWKS(cfg.JWKSURL)
	checks["jwks"] = jwks.Ping
	return jwtauth.NewVerifier(jwks, cfg.Issuer, cfg.Audience)
}

// earlierPhotos is the ALEX client for earlier photos: the practice's ALEX
// credentials, on the server only. Its logger never sees tokens or query
// strings.
func earlierPhotos(c fhir.Config, log *slog.Logger) (*fhir.Client, error) {
	c.Logger = log
	return fhir.NewClient(c)
}

// writeAudit writes the audit trail from the event stream, beside the
// requests and never in their way.
func writeAudit(g *ops.Group, conns *ops.Conns, cfg Config, trail *audit.Store, log *slog.Logger) error {
	cons, err := ops.Consumer(g.Context(), log, conns.JS, cfg.Common.Names, audit.Consumer(cfg.Common.AckWait))
	if err != nil {
		return err
	}
	stream, err := conns.JS.Stream(g.Context(), cfg.Common.Names.Stream)
	if err != nil {
		return fmt.Errorf("audit stream: %w", err)
	}
	writer := audit.NewWriter(trail, log)
	g.Go(ops.StageWork, "audit", func(ctx context.Context) error {
		return writer.Consume(ctx, stream, cons, consume.Options{
			Grace: g.Grace(), DeadLetters: deadletter.New(conns.JS, cfg.Common.Names),
		})
	})
	return nil
}
