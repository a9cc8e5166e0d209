package relay

import (
	"cmp"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

// Config is the relay's configuration. Environment variables, beyond the
// common ones (NATS_URL, NATS_STREAM, NATS_SUBJECT_PREFIX, OPS_ADDR default
// :9092, LOG_LEVEL):
//
//	ABLY_API_KEY           set: publish to Ably ("appId.keyId:secret"); unset: serve SSE
//	ABLY_ENDPOINT          Ably endpoint or host:port, e.g. "http://127.0.0.1:PORT"
//	                       for the stand-in (an http:// prefix turns TLS off)
//	ABLY_TLS               default true
//	ABLY_PUBLISH_TIMEOUT   deadline of one publish attempt, default 10s
//	ABLY_CHANNEL_RATE      messages per second per channel, default 50 (Ably's limit)
//	RELAY_PUBLISHERS       Ably publishes in flight at once (each channel's one at a time), default 16
//	NATS_ACK_WAIT          how long the relay's claim on an event outlives a relay that
//	                       died holding it (default 15s); a live relay renews its claims
//	REALTIME_SIGNING_KEY   SSE mode: "name:secret" shared with the API (required)
//	RELAY_ADDR             SSE mode: listen address, default :8081
//	RELAY_ALLOWED_ORIGINS  SSE mode: CORS origins, comma separated, default *
//	RELAY_HEARTBEAT        SSE mode: keep-alive comment interval, default 15s
//	RELAY_SUBSCRIBER_BUFFER SSE mode: events queued per subscriber before it
//	                       is dropped (it then resumes with Last-Event-ID), default 256
//	HTTP_*                 SSE mode: the server's limits (ops.ReadLimits);
//	                       HTTP_MAX_CONNS defaults to 10000 (one per open stream)
type Config struct {
	Common   config.Common
	Realtime realtime.Settings // Mode, and the Ably key or the SSE signing key

	AblyEndpoint   string
	AblyTLS        bool
	PublishTimeout time.Duration
	ChannelRate    int
	Publishers     int

	Addr             string
	AllowedOrigins   []string
	Heartbeat        time.Duration
	SubscriberBuffer int
	HTTP             ops.Limits // zero: sseLimits()

	// Logger defaults to JSON on stderr at Common.LogLevel.
	Logger *slog.Logger
	// Registry defaults to ops.Registry().
	Registry *prometheus.Registry
	// Now is the clock for token expiry (default time.Now).
	Now func() time.Time
	// Listening, if set, is told each address bound ("sse", "ops"), for
	// tests and runners that use port 0.
	Listening func(name, addr string)
}

// ConfigFromEnv reads the configuration, reporting every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	r := config.New(getenv)
	c := Config{
		Common:           r.ReadCommon(":9092"),
		Realtime:         realtime.ReadSettings(r),
		AblyEndpoint:     r.String("ABLY_ENDPOINT", ""),
		AblyTLS:          r.Bool("ABLY_TLS", true),
		PublishTimeout:   r.Duration("ABLY_PUBLISH_TIMEOUT", 10*time.Second),
		ChannelRate:      r.Int("ABLY_CHANNEL_RATE", 50),
		Publishers:       r.Int("RELAY_PUBLISHERS", 16),
		Addr:             r.String("RELAY_ADDR", ":8081"),
		AllowedOrigins:   splitList(r.String("RELAY_ALLOWED_ORIGINS", "*")),
		Heartbeat:        r.Duration("RELAY_HEARTBEAT", 15*time.Second),
		SubscriberBuffer: r.Int("RELAY_SUBSCRIBER_BUFFER", 256),
		HTTP:             ops.ReadLimits(r, sseLimits()),
	}
	if c.ChannelRate <= 0 {
		r.Fail("ABLY_CHANNEL_RATE must be positive")
	}
	if c.Publishers <= 0 {
		r.Fail("RELAY_PUBLISHERS must be positive")
	}
	if c.SubscriberBuffer <= 0 {
		r.Fail("RELAY_SUBSCRIBER_BUFFER must be positive")
	}
	if c.PublishTimeout <= 0 || c.Heartbeat <= 0 {
		r.Fail("ABLY_PUBLISH_TIMEOUT and RELAY_HEARTBEAT must be positive")
	}
	if c.AblyEndpoint != "" {
		if _, _, err := ablyEndpoint(c.AblyEndpoint, c.AblyTLS); err != nil {
			r.Fail("ABLY_ENDPOINT: %v", err)
		}
	}
	return c, r.Err()
}

func (c *Config) defaults() {
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = 10 * time.Second
	}
	if c.ChannelRate <= 0 {
		c.ChannelRate = 50
	}
	if c.Publishers <= 0 {
		c.Publishers = 16
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.SubscriberBuffer <= 0 {
		c.SubscriberBuffer = 256
	}
	if len(c.AllowedOrigins) == 0 {
		c.AllowedOrigins = []string{"*"}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Realtime.Mode == "" {
		c.Realtime.Mode = realtime.ModeSSE
	}
	if c.HTTP == (ops.Limits{}) {
		c.HTTP = sseLimits()
	}
}

// sseLimits are the SSE server's default limits: an open stream is a
// connection, so many more of them than an API takes.
func sseLimits() ops.Limits {
	l := ops.DefaultLimits()
	l.MaxConns = 10000
	return l
}

// ablyEndpoint splits ABLY_ENDPOINT into ably-go's endpoint and TLS flag:
// "http://h:p" is h:p without TLS, "https://h:p" with TLS, a bare value as
// given with tls.
func ablyEndpoint(v string, tls bool) (string, bool, error) {
	if !strings.Contains(v, "://") {
		return v, tls, nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", false, errBadEndpoint
	}
	return u.Host, u.Scheme == "https", nil
}

var errBadEndpoint = errors.New("want host, host:port or http(s)://host:port")

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Consumer is the relay's JetStream consumer: every event, one relay at a
// time (pinned, so each channel's events leave in stream order), never
// dropped (the relay retries Ably for ever); a dead relay's held events
// come back after AckWait (NATS_ACK_WAIT, default 15s).
func (c Config) Consumer() events.Consumer {
	return events.Consumer{Name: events.ConsumerRelay, AckWait: cmp.Or(c.Common.AckWait, 15*time.Second),
		MaxDeliver: -1, MaxAckPending: 1024, Pinned: true}
}
