// Package config reads service configuration from the environment in one
// place. A Reader collects every problem so a service reports them all at
// once, before it opens any connection.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// Reader reads typed values from a getenv function and remembers errors.
type Reader struct {
	get  func(string) string
	errs []error
}

// New reads from getenv (os.Getenv in main, a map in tests).
func New(getenv func(string) string) *Reader { return &Reader{get: getenv} }

// Err is every problem found, joined, or nil.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

// Fail records a problem found by the caller.
func (r *Reader) Fail(format string, a ...any) { r.errs = append(r.errs, fmt.Errorf(format, a...)) }

// String is name's value or def.
func (r *Reader) String(name, def string) string {
	if v := strings.TrimSpace(r.get(name)); v != "" {
		return v
	}
	return def
}

// Required is name's value; its absence is an error.
func (r *Reader) Required(name string) string {
	v := strings.TrimSpace(r.get(name))
	if v == "" {
		r.Fail("%s is required", name)
	}
	return v
}

// Secret is a secret's value: name's, or the contents of the file
// name_FILE names (a mounted Docker or Kubernetes secret), trailing
// newlines and spaces trimmed; "" when neither is set. Setting both, or a
// file that cannot be read, is a problem; the value never appears in one.
func (r *Reader) Secret(name string) string {
	v := strings.TrimSpace(r.get(name))
	path := strings.TrimSpace(r.get(name + "_FILE"))
	switch {
	case path == "":
		return v
	case v != "":
		r.Fail("%s and %s_FILE are both set: set one", name, name)
		return ""
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		r.Fail("%s_FILE: %v", name, err)
		return ""
	}
	if v = strings.TrimRight(string(raw), "\r\n\t "); v == "" {
		r.Fail("%s_FILE: %s is empty", name, path)
	}
	return v
}

// RequiredSecret is Secret; its absence is an error.
func (r *Reader) RequiredSecret(name string) string {
	v := r.Secret(name)
	if v == "" && strings.TrimSpace(r.get(name+"_FILE")) == "" {
		r.Fail("%s (or %s_FILE) is required", name, name)
	}
	return v
}

// List is name's value split at commas, each item trimmed and empty ones
// dropped; nil when unset.
func (r *Reader) List(name string) []string {
	var out []string
	for _, s := range strings.Split(r.get(name), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Int is name's value as an integer, or def.
func (r *Reader) Int(name string, def int) int {
	v := strings.TrimSpace(r.get(name))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.Fail("%s: %q is not an integer", name, v)
		return def
	}
	return n
}

// Duration is name's value as a Go duration ("10m", "30s"), or def.
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v := strings.TrimSpace(r.get(name))
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		r.Fail("%s: %q is not a duration like 30s or 10m", name, v)
		return def
	}
	return d
}

// Bool is name's value as a boolean, or def.
func (r *Reader) Bool(name string, def bool) bool {
	v := strings.TrimSpace(r.get(name))
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.Fail("%s: %q is not true or false", name, v)
		return def
	}
	return b
}

// Common is what every service needs: where Redis, NATS and S3 are, the
// stream names, and its operations port.
type Common struct {
	RedisURL    string        // REDIS_URL (or REDIS_URL_FILE), default redis://127.0.0.1:6379/0 (rediss:// for TLS, e.g. Upstash)
	RedisPrefix string        // REDIS_KEY_PREFIX, default empty (the seeds' key names)
	NATSURL     string        // NATS_URL, default nats://127.0.0.1:4222 (tls:// for TLS; user:password@ in the URL or NATS_URL_FILE)
	NATSAuth    NATSAuth      // NATS_CREDS, NATS_NKEY_SEED, NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY
	Names       events.Names  // NATS_STREAM (CLINIMG), NATS_SUBJECT_PREFIX (clinimg)
	Replicas    int           // NATS_REPLICAS, default 1; 3 in production
	AckWait     time.Duration // NATS_ACK_WAIT: how long the service's claim on an event outlives a worker that died (default the consumer's own)
	S3          blob.Config   // S3_BUCKET_NAME, AWS_REGION, S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or _FILE), S3_PATH_STYLE
	OpsAddr     string        // OPS_ADDR: /healthz, /readyz, /metrics (default per service)
	Grace       time.Duration // SHUTDOWN_GRACE: how long work in flight may take once told to stop (default 10s)
	LogLevel    string        // LOG_LEVEL: debug, info (default), warn, error
	SessionTTL  time.Duration // SESSION_TTL: a capture session's idle lifetime, the same for every service (default 2h)
}

// NATSAuth is how a service proves itself to NATS and checks the server:
// each a path to a mounted file, empty for none.
type NATSAuth struct {
	CredsFile string // NATS_CREDS: a user JWT and NKey seed (.creds, Synadia Cloud or an operator-mode server)
	NKeySeed  string // NATS_NKEY_SEED: a file holding an NKey user seed (SU...)
	CAFile    string // NATS_TLS_CA: the CA that signed the servers' certificates (a private CA)
	CertFile  string // NATS_TLS_CERT and NATS_TLS_KEY: a client certificate, for servers that verify clients
	KeyFile   string
}

// ReadCommon reads the common settings; opsAddr is the service's default
// operations address.
func (r *Reader) ReadCommon(opsAddr string) Common {
	c := Common{
		RedisURL:    cmp.Or(r.Secret("REDIS_URL"), "redis://127.0.0.1:6379/0"), // an Upstash URL holds its password
		RedisPrefix: r.String("REDIS_KEY_PREFIX", ""),
		NATSURL:     cmp.Or(r.Secret("NATS_URL"), "nats://127.0.0.1:4222"),
		NATSAuth: NATSAuth{
			CredsFile: r.String("NATS_CREDS", ""),
			NKeySeed:  r.String("NATS_NKEY_SEED", ""),
			CAFile:    r.String("NATS_TLS_CA", ""),
			CertFile:  r.String("NATS_TLS_CERT", ""),
			KeyFile:   r.String("NATS_TLS_KEY", ""),
		},
		Names: events.Names{
			Stream: r.String("NATS_STREAM", events.DefaultNames.Stream),
			Prefix: r.String("NATS_SUBJECT_PREFIX", events.DefaultNames.Prefix),
		},
		Replicas: r.Int("NATS_REPLICAS", 1),
		AckWait:  r.Duration("NATS_ACK_WAIT", 0),
		S3: blob.Config{
			Bucket:    r.String("S3_BUCKET_NAME", "clinicpro-images-temp"),
			Region:    r.String("AWS_REGION", "ap-southeast-2"),
			Endpoint:  r.String("S3_ENDPOINT", ""),
			AccessKey: r.String("AWS_ACCESS_KEY_ID", ""),
			SecretKey: r.Secret("AWS_SECRET_ACCESS_KEY"),
			PathStyle: r.Bool("S3_PATH_STYLE", false),
		},
		OpsAddr:    r.String("OPS_ADDR", opsAddr),
		Grace:      r.Duration("SHUTDOWN_GRACE", 10*time.Second),
		LogLevel:   r.String("LOG_LEVEL", "info"),
		SessionTTL: r.Duration("SESSION_TTL", 2*time.Hour),
	}
	if c.SessionTTL < 2*time.Second || c.SessionTTL > 24*time.Hour {
		r.Fail("SESSION_TTL must be between 2s and 24h")
	}
	if a := c.NATSAuth; a.CredsFile != "" && a.NKeySeed != "" {
		r.Fail("NATS_CREDS and NATS_NKEY_SEED are both set: set one")
	}
	if a := c.NATSAuth; (a.CertFile == "") != (a.KeyFile == "") {
		r.Fail("NATS_TLS_CERT and NATS_TLS_KEY go together")
	}
	if c.AckWait != 0 && c.AckWait < 2*time.Second {
		r.Fail("NATS_ACK_WAIT: %s is shorter than 2s", c.AckWait)
	}
	if c.S3.AccessKey != "" && c.S3.SecretKey == "" {
		r.Fail("AWS_SECRET_ACCESS_KEY is required with AWS_ACCESS_KEY_ID")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		r.Fail("LOG_LEVEL: %q is not debug, info, warn or error", c.LogLevel)
	}
	return c
}
