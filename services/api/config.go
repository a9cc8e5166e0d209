package api

import (
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/jwtauth"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// DevIssuer is a development identity provider (dev/devissuer) that the
// local stack and tests inject: its verifier replaces the JWKS, and the API
// serves its tokens at /dev/token and its keys at /dev/jwks.json. Nothing in
// this module makes one, so the production binary links no signing key.
type DevIssuer interface {
	Token(userID string, ttl time.Duration) (string, error)
	JWKS() []byte
	Verifier() *jwtauth.Verifier
}

// Config is everything the API needs, read once at start-up.
type Config struct {
	Common config.Common

	// Addr is where the API and the pages listen (API_ADDR, default :8080).
	Addr string
	// PublicURL is the base URL phones reach the pages at; the QR code points
	// at PublicURL/mobile?token=... (PUBLIC_URL; empty, the default, means the
	// origin the desktop itself used, so `HOST=<LAN address> make run` works
	// with a real phone).
	PublicURL string

	// Desktop tokens: JWTs verified against AUTH_JWKS_URL, with AUTH_ISSUER
	// and AUTH_AUDIENCE checked. All three are required; DevIssuer (the
	// local stack) replaces the JWKS but keeps the issuer and audience check.
	JWKSURL  string
	Issuer   string
	Audience string
	// DevIssuer, when set (local stack and tests only, never from the
	// environment), signs and verifies desktop tokens and serves /dev/token.
	DevIssuer DevIssuer

	// UploadExpiry is how long a presigned PUT is valid (UPLOAD_URL_EXPIRY, default 10m).
	UploadExpiry time.Duration
	// ViewExpiry is how long the presigned GETs in a session read are valid
	// (VIEW_URL_EXPIRY, default 15m).
	ViewExpiry time.Duration
	// MaxImageBytes is the largest photo accepted (MAX_IMAGE_BYTES, default 20 MiB).
	MaxImageBytes int64
	// MaxImages caps photos per session (MAX_IMAGES, default 50).
	MaxImages int
	// ConsentRequired refuses a commit while the session has no consent
	// record, 409 consent_required (CONSENT_REQUIRED, default true).
	ConsentRequired bool
	// MaxPhones caps the phones paired with one session at once (MAX_PHONES,
	// default 2).
	MaxPhones int
	// MaxUploads caps a session's outstanding presigned uploads, issued and
	// neither recorded nor expired (MAX_UPLOADS, default 20).
	MaxUploads int
	// SweepInterval is how often the sweep looks for ended sessions whose
	// objects are left (SESSION_SWEEP_INTERVAL, default 30s): they are
	// deleted within about SESSION_TTL plus this.
	SweepInterval time.Duration
	// QRRedeemLimit is how many QR codes one client address may try per
	// minute (QR_REDEEM_LIMIT, default 30).
	QRRedeemLimit int
	// TrustedProxies are the proxies (addresses or CIDRs) whose
	// X-Forwarded-For names the client (TRUSTED_PROXIES, comma separated,
	// default none: the connection's address is the client's).
	TrustedProxies []string
	// CommitWait is how long POST commit waits for the outcome before
	// answering 202 (COMMIT_WAIT, default 25s).
	CommitWait time.Duration

	// ALEX, when ALEX_API_URL is set, is how the API reads the session
	// patient's earlier photos from the record with the practice's
	// credentials: the committer's ALEX_API_URL, ALEX_OAUTH_TOKEN_URL,
	// ALEX_CLIENT_ID, ALEX_CLIENT_SECRET, ALEX_SCOPE, ALEX_FACILITY_ID,
	// ALEX_APP_ID, and ALEX_REQUEST_TIMEOUT (default 15s here: a GP is
	// waiting). Nil (the default) answers earlier photos "not_configured".
	ALEX *fhir.Config

	// HTTP bounds what clients can hold of the API's server (HTTP_* in
	// ops.ReadLimits). The write timeout must exceed CommitWait.
	HTTP ops.Limits
	// FrameAncestors is who may embed the pages (FRAME_ANCESTORS, a CSP
	// frame-ancestors source list such as "https://evolution.example";
	// default 'none').
	FrameAncestors string

	// Realtime is how browsers subscribe: Ably tokens when ABLY_API_KEY is
	// set, else tokens for the relay's built-in SSE signed with
	// REALTIME_SIGNING_KEY (see realtime.ReadSettings).
	Realtime realtime.Settings

	// Logger and Registry may be injected by the local stack and tests.
	Logger   *slog.Logger
	Registry *prometheus.Registry
	// Ready, if not nil, receives the API's bound address once it listens;
	// OpsReady the operations server's (/healthz, /readyz, /metrics).
	Ready    chan<- string
	OpsReady chan<- string
}

// DefaultQRRedeemLimit is how many QR codes one address may try per minute.
// It is generous because a practice's phones often share one public
// address; guessing a 128-bit QR token needs far more than this allows.
const DefaultQRRedeemLimit = 30

// ConfigFromEnv reads the API's configuration, reporting every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	r := config.New(getenv)
	c := Config{
		Common:          r.ReadCommon(":9091"),
		Addr:            r.String("API_ADDR", ":8080"),
		PublicURL:       strings.TrimRight(r.String("PUBLIC_URL", ""), "/"),
		JWKSURL:         r.String("AUTH_JWKS_URL", ""),
		Issuer:          r.String("AUTH_ISSUER", ""),
		Audience:        r.String("AUTH_AUDIENCE", ""),
		UploadExpiry:    r.Duration("UPLOAD_URL_EXPIRY", 10*time.Minute),
		ViewExpiry:      r.Duration("VIEW_URL_EXPIRY", 15*time.Minute),
		MaxImageBytes:   int64(r.Int("MAX_IMAGE_BYTES", 20<<20)),
		MaxImages:       r.Int("MAX_IMAGES", 50),
		CommitWait:      r.Duration("COMMIT_WAIT", 25*time.Second),
		MaxPhones:       r.Int("MAX_PHONES", session.DefaultMaxPhones),
		ConsentRequired: r.Bool("CONSENT_REQUIRED", true),
		MaxUploads:      r.Int("MAX_UPLOADS", session.DefaultMaxUploads),
		SweepInterval:   r.Duration("SESSION_SWEEP_INTERVAL", 30*time.Second),
		QRRedeemLimit:   r.Int("QR_REDEEM_LIMIT", DefaultQRRedeemLimit),
		TrustedProxies:  r.List("TRUSTED_PROXIES"),
		HTTP:            ops.ReadLimits(r, ops.DefaultLimits()),
		FrameAncestors:  r.String("FRAME_ANCESTORS", "'none'"),
		Realtime:        realtime.ReadSettings(r),
	}
	c.ALEX = readALEX(r, c.HTTP.WriteTimeout)
	if _, err := url.ParseRequestURI(c.PublicURL); c.PublicURL != "" && err != nil {
		r.Fail("PUBLIC_URL: %q is not a URL", c.PublicURL)
	}
	if c.JWKSURL == "" {
		r.Fail("AUTH_JWKS_URL is required: the JWKS of the identity provider that signs desktop tokens")
	}
	if c.Issuer == "" || c.Audience == "" {
		r.Fail("AUTH_ISSUER and AUTH_AUDIENCE are required: a token the identity provider issued for another application must not pass")
	}
	if c.UploadExpiry < time.Minute || c.UploadExpiry > time.Hour {
		r.Fail("UPLOAD_URL_EXPIRY must be between 1m and 1h")
	}
	// Role credentials are renewed before the longest URL could outlive them.
	c.Common.S3.URLLifetime = max(c.UploadExpiry, c.ViewExpiry)
	if c.MaxImages < 1 || c.MaxImages > 500 {
		r.Fail("MAX_IMAGES must be between 1 and 500")
	}
	if c.MaxPhones < 1 || c.MaxPhones > 10 {
		r.Fail("MAX_PHONES must be between 1 and 10")
	}
	if c.MaxUploads < 1 || c.MaxUploads > 500 {
		r.Fail("MAX_UPLOADS must be between 1 and 500")
	}
	if c.SweepInterval < 100*time.Millisecond || c.SweepInterval > time.Hour {
		r.Fail("SESSION_SWEEP_INTERVAL must be between 100ms and 1h")
	}
	if c.QRRedeemLimit < 1 {
		r.Fail("QR_REDEEM_LIMIT must be positive")
	}
	if c.HTTP.WriteTimeout <= c.CommitWait {
		r.Fail("HTTP_WRITE_TIMEOUT (%s) must be longer than COMMIT_WAIT (%s)", c.HTTP.WriteTimeout, c.CommitWait)
	}
	for _, src := range strings.Fields(c.FrameAncestors) {
		if src != "'self'" && src != "'none'" && !frameSource.MatchString(src) {
			r.Fail("FRAME_ANCESTORS: %q is not 'self', 'none' or an http(s) origin", src)
		}
	}
	if err := gin.New().SetTrustedProxies(c.TrustedProxies); err != nil {
		r.Fail("TRUSTED_PROXIES: %v", err)
	}
	return c, r.Err()
}

// readALEX is the ALEX the earlier photos come from, nil without
// ALEX_API_URL; a request to it must end before the API's response must.
func readALEX(r *config.Reader, writeTimeout time.Duration) *fhir.Config {
	if r.String("ALEX_API_URL", "") == "" {
		return nil
	}
	c := fhir.ReadConfig(r, 15*time.Second)
	if c.Timeout <= 0 || c.Timeout >= writeTimeout {
		r.Fail("ALEX_REQUEST_TIMEOUT (%s) must be positive and shorter than HTTP_WRITE_TIMEOUT (%s)", c.Timeout, writeTimeout)
	}
	return &c
}

// frameSource is an origin a CSP source list may name.
var frameSource = regexp.MustCompile(`^https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?$`)
