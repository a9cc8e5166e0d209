// Package api is the Clinical Images HTTP API: sessions bound to a patient,
// presigned uploads, photo records, metadata, commits, and the two web pages.
// Every change goes through the atomic session store, whose outbox carries
// the events to JetStream.
package api

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/jwtauth"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/services/api/web"
)

// objects is what the API needs of the photo bucket.
type objects interface {
	PresignPut(ctx context.Context, key, contentType string, length int64, expires time.Duration) (string, error)
	PresignGet(ctx context.Context, key string, expires time.Duration) (string, error)
	Sniff(ctx context.Context, key string, n int) (blob.Info, []byte, error)
	Put(ctx context.Context, key, contentType string, body io.ReadSeeker, size int64) error
	Delete(ctx context.Context, keys ...string) error
}

// Deps are the Server's collaborators, built by Run (or a test).
type Deps struct {
	Store    sessions      // a *session.Store
	Redis    redis.Cmdable // rate limits, under the store's key prefix
	Objects  objects       // a *blob.Store
	Verifier *jwtauth.Verifier
	Waiter   commitWaiter // a *Waiter
	// Audit reads the sessions' chains of custody (an *audit.Store; nil:
	// none kept).
	Audit auditTrail
	// ALEX reads patients' earlier photos (a *fhir.Client; nil: earlier
	// photos are not configured).
	ALEX     alexReader
	Registry *prometheus.Registry
	Logger   *slog.Logger
	Now      func() time.Time
}

// Server holds the handlers.
type Server struct {
	cfg      Config
	store    sessions
	objects  objects
	verifier *jwtauth.Verifier
	waiter   commitWaiter
	audit    auditTrail
	reg      *prometheus.Registry
	log      *slog.Logger
	now      func() time.Time
	metrics  *metrics
	earlier  *earlierStore // nil without ALEX

	redeemLimit *rateLimiter // QR redemptions per client address
}

// NewServer wires the handlers to their collaborators.
func NewServer(cfg Config, d Deps) *Server {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Registry == nil {
		d.Registry = ops.Registry()
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	keys := ""
	if d.Store != nil {
		keys = d.Store.Options().Prefix // the store's session.Keys
	}
	s := &Server{
		cfg: cfg, store: d.Store, objects: d.Objects, verifier: d.Verifier, waiter: d.Waiter, audit: d.Audit,
		reg: d.Registry, log: d.Logger, now: d.Now, metrics: newMetrics(d.Registry),
		redeemLimit: &rateLimiter{rdb: d.Redis, prefix: keys + "ratelimit:qr:",
			limit: cmp.Or(cfg.QRRedeemLimit, DefaultQRRedeemLimit), window: time.Minute, now: d.Now},
	}
	if d.ALEX != nil {
		s.earlier = &earlierStore{alex: d.ALEX, objects: d.Objects, store: d.Store, rdb: d.Redis, log: d.Logger, now: d.Now}
	}
	return s
}

// Router registers every route in one place. Gin's mode is the process's
// to set (main sets release mode; GIN_MODE also does).
func (s *Server) Router() http.Handler {
	r := gin.New()
	r.HandleMethodNotAllowed = true
	// Client addresses (for rate limits) come from X-Forwarded-For only
	// when the connection is from a configured proxy.
	r.ForwardedByClientIP = len(s.cfg.TrustedProxies) > 0
	_ = r.SetTrustedProxies(s.cfg.TrustedProxies) // checked in ConfigFromEnv
	r.Use(s.recoverer, s.observe, s.trace, s.secureHeaders)
	r.NoRoute(func(c *gin.Context) { s.respondErr(c, clientErr(http.StatusNotFound, "not_found", "no such route")) })
	r.NoMethod(func(c *gin.Context) {
		s.respondErr(c, clientErr(http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed"))
	})

	// /readyz and /metrics are on the operations port only (Run); a load
	// balancer's liveness probe may use /healthz here.
	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, healthAnswer{Status: "ok"}) })
	r.GET("/openapi.json", s.openAPI)

	pages := web.Handler(web.CSP(s.pagePolicy()))
	r.GET("/", gin.WrapH(pages))
	r.GET("/mobile", gin.WrapH(pages))
	r.GET("/static/*path", gin.WrapH(pages))
	if s.cfg.DevIssuer != nil {
		r.GET("/dev/token", s.devToken)
		r.GET("/dev/jwks.json", func(c *gin.Context) { c.Data(http.StatusOK, "application/json", s.cfg.DevIssuer.JWKS()) })
	}

	a := r.Group("/api")
	a.GET("/body-sites", s.getBodySites)
	a.GET("/vocabulary", s.getVocabulary)
	a.GET("/session-tokens/:token", s.exchangeToken)
	a.POST("/session-tokens", s.authenticate, s.requireDesktop, s.startSession)

	// Recording a photo checks the phone's session and pairing in its own
	// script; every other route checks them first (requirePaired).
	a.POST("/users/:userId/images", s.authenticate, s.requireUser, s.recordImage)
	u := a.Group("/users/:userId", s.authenticate, s.requireUser, s.requirePaired)
	u.POST("/presigned-url", s.presign)
	u.PATCH("/images/:imageId", s.updateImage)
	u.DELETE("/images/:imageId", s.deleteImage)
	u.GET("/session", s.getSession)
	u.POST("/commit", s.commit)
	u.GET("/commit", s.commitStatus)
	u.POST("/commit/stop", s.stopCommit)
	u.GET("/realtime-token", s.realtimeToken)
	u.PUT("/pending", s.setPending)
	u.PUT("/open-patient", s.setOpenPatient)
	u.PUT("/consent", s.setConsent)
	u.GET("/phones", s.requireDesktop, s.listPhones)
	u.DELETE("/phones/:phoneId", s.requireDesktop, s.removePhone)
	u.GET("/sessions/:sessionId/audit", s.requireDesktop, s.getAudit)
	u.GET("/earlier-photos", s.requireDesktop, s.getEarlierPhotos)
	return r
}

// secureHeaders keeps browsers from guessing content types, and API answers
// (which may carry presigned URLs and patient ids) out of caches.
func (s *Server) secureHeaders(c *gin.Context) {
	c.Header("X-Content-Type-Options", "nosniff")
	if strings.HasPrefix(c.Request.URL.Path, "/api/") {
		c.Header("Cache-Control", "no-store")
	}
	c.Next()
}

// pagePolicy names the origins the pages reach: the bucket (presigned GETs
// and PUTs, found by presigning a URL, so it is exactly the host the API
// hands out) and the realtime SSE endpoint.
func (s *Server) pagePolicy() web.Policy {
	p := web.Policy{FrameAncestors: s.cfg.FrameAncestors}
	if s.objects != nil {
		if u, err := s.objects.PresignGet(context.Background(), "temp/csp", time.Minute); err == nil {
			if o := origin(u); o != "" {
				p.Images = append(p.Images, o)
				p.Connect = append(p.Connect, o)
			}
		}
	}
	if o := origin(s.cfg.Realtime.URL); o != "" && !slices.Contains(p.Connect, o) {
		p.Connect = append(p.Connect, o)
	}
	return p
}

// origin is scheme://host[:port] of u, or "" when u is not an absolute URL.
func origin(u string) string {
	pu, err := url.Parse(u)
	if err != nil || pu.Scheme == "" || pu.Host == "" {
		return ""
	}
	return pu.Scheme + "://" + pu.Host
}

// recoverer turns a panic into a logged 500 with the usual JSON body.
func (s *Server) recoverer(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("api.panic", "route", c.FullPath(), "panic", v)
			c.AbortWithStatusJSON(http.StatusInternalServerError, errorAnswer{Error: "internal error", Code: "internal"})
		}
	}()
	c.Next()
}

// observe records each request's route, status and duration, and logs it
// without its query string (which may carry a token).
func (s *Server) observe(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	status := strconv.Itoa(c.Writer.Status())
	s.metrics.requests.WithLabelValues(c.Request.Method, route, status).Inc()
	s.metrics.latency.WithLabelValues(c.Request.Method, route).Observe(time.Since(start).Seconds())
	if route != "/healthz" {
		s.log.Debug("http.request", "method", c.Request.Method, "route", route, "status", c.Writer.Status(),
			"ms", time.Since(start).Milliseconds(), "user_id", c.Param("userId"))
	}
}
