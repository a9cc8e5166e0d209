// Package local runs the whole Clinical Images system in one process. The
// four services run the same Run functions production runs, configured by
// the same environment variables; each outside part is embedded unless its
// variables say where the real one is:
//
//	Redis  REDIS_URL set: that Redis; else an in-process Redis-compatible server
//	NATS   NATS_URL set: that NATS (JetStream); else an embedded nats-server
//	S3     S3_BUCKET_NAME set: that bucket (S3_ENDPOINT, AWS_*); else an
//	       in-process S3 server that checks SigV4 signatures
//	Ably   ABLY_API_KEY set: Ably (ABLY_ENDPOINT, ABLY_SSE_URL); else the
//	       relay's built-in SSE
//	ALEX   ALEX_API_URL set: that ALEX (every ALEX_* variable); else the
//	       ALEX simulator
//	Auth   AUTH_JWKS_URL set: that identity provider; else a development
//	       token issuer (GET /dev/token)
//
// Every other service variable (LOG_LEVEL, COMMIT_WORKERS, PUBLIC_URL, ...)
// is taken from the environment as the services would take it. It is for
// `make run`, demos and end-to-end tests; nothing embedded is for
// production.
package local

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/deploy/local/natsembed"
	"github.com/clinicalimages/clinimg/deploy/local/s3local"
	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/devissuer"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/api"
	"github.com/clinicalimages/clinimg/services/committer"
	"github.com/clinicalimages/clinimg/services/relay"
	"github.com/clinicalimages/clinimg/services/thumbnailer"
)

// Options shape the stack. Zero values take the defaults named.
type Options struct {
	// Host is the interface every server binds (default 127.0.0.1). Use a
	// LAN address to scan the QR code with a real phone.
	Host string
	// APIPort serves the API and pages (default 0: any free port).
	APIPort int
	// RelayPort serves the built-in SSE (default 0).
	RelayPort int
	// OpsPorts, when true, gives the services their production ops ports
	// (9091-9094) instead of free ones.
	OpsPorts bool
	// DataDir holds JetStream's files (default a new temporary directory,
	// removed on Close).
	DataDir string
	// NATSURL uses a running NATS server with JetStream instead of the
	// embedded one (tests use a server process of their own, so the race
	// detector watches our code rather than the server's), as NATS_URL in
	// Env does.
	NATSURL string
	// RedisURL uses a real Redis instead of the in-process one, as
	// REDIS_URL in Env does.
	RedisURL string
	// RedisPrefix prefixes every key (useful on a shared Redis).
	RedisPrefix string
	// ALEXLatency slows every simulated ALEX request.
	ALEXLatency time.Duration
	// Logger receives every service's logs (default JSON on stderr at info).
	Logger *slog.Logger
	// Env is the services' environment (`make run` passes its own): it
	// names the real parts (see the package comment) and overrides any
	// other service setting. Listen addresses are the stack's (Host and
	// the ports above).
	Env map[string]string
	// Registries, keyed by service name (api, relay, committer,
	// thumbnailer), receive that service's metrics instead of a registry of
	// its own; tests read the counters from them.
	Registries map[string]*prometheus.Registry
}

// Part is one outside system and which one the stack uses.
type Part struct {
	Name     string // Redis, NATS, S3, Ably, ALEX, Auth
	Embedded bool
	Where    string // an address or name, never a secret
}

// Stack is a running system.
type Stack struct {
	URL      string // the API and the pages
	APIOps   string // the API's operations server: /healthz, /readyz, /metrics
	RelayURL string // the built-in SSE endpoint ("" with Ably)
	ALEXURL  string // the simulator's or the real ALEX's base URL
	Parts    []Part

	ALEX    *alexsim.Server // nil when ALEX is real
	S3      *s3local.Server // nil when S3 is real
	Blob    *blob.Store
	Redis   *redis.Client
	Store   *session.Store
	NATSURL string
	Issuer  *devissuer.Issuer // nil when Auth is real

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
	cleanup []func()
}

// DesktopToken signs a desktop bearer token for userID with the development
// issuer, as GET /dev/token does.
func (s *Stack) DesktopToken(userID string) (string, error) {
	return s.Issuer.Token(userID, 12*time.Hour)
}

// Err reports services that stopped with an error.
func (s *Stack) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// Close stops the services, then the embedded servers, and removes a
// temporary data directory.
func (s *Stack) Close() error {
	s.cancel()
	s.wg.Wait()
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		s.cleanup[i]()
	}
	return s.Err()
}

// Start brings the whole system up and returns once the API answers.
func Start(ctx context.Context, opt Options) (_ *Stack, err error) {
	if opt.Host == "" {
		opt.Host = "127.0.0.1"
	}
	if opt.Logger == nil {
		opt.Logger = ops.Logger(os.Stderr, "", "info")
	}
	ctx, cancel := context.WithCancel(ctx)
	st := &Stack{cancel: cancel}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	b := &builder{opt: opt, st: st, set: map[string]string{}}
	for _, step := range []func(context.Context) error{
		b.redis, b.nats, b.s3, b.alex, b.auth, b.realtime,
		b.relay, b.committer, b.thumbnailer, b.api,
	} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// builder brings up a Stack one part, then one service, at a time.
type builder struct {
	opt Options
	st  *Stack
	// set holds what the stack decides: the embedded parts' addresses and
	// credentials (never overridden by a stray variable such as an AWS key
	// in the caller's shell) and each service's listen addresses.
	set map[string]string
	// ably is true when Ably carries realtime instead of the relay's SSE.
	ably bool
	// apiEnv is what the API alone is given.
	apiEnv map[string]string
}

func (b *builder) at(port int) string { return net.JoinHostPort(b.opt.Host, strconv.Itoa(port)) }

func (b *builder) given(k string) string { return strings.TrimSpace(b.opt.Env[k]) }

func (b *builder) part(name string, embedded bool, where string) {
	b.st.Parts = append(b.st.Parts, Part{Name: name, Embedded: embedded, Where: where})
}

// opsAddr is a service's ops address: its production port with OpsPorts,
// else any free one.
func (b *builder) opsAddr(port int) string {
	if b.opt.OpsPorts {
		return b.at(port)
	}
	return b.at(0)
}

// env is a service's environment: its own settings, then the stack's,
// then the caller's.
func (b *builder) env(service map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := service[k]; ok {
			return v
		}
		if v, ok := b.set[k]; ok {
			return v
		}
		return b.opt.Env[k]
	}
}

func (b *builder) logger(name string) *slog.Logger { return b.opt.Logger.With("service", name) }

// redis: the real one if named, else an in-process server.
func (b *builder) redis(ctx context.Context) (err error) {
	st := b.st
	redisURL := cmp.Or(b.opt.RedisURL, b.given("REDIS_URL"))
	if redisURL == "" {
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("embedded redis: %w", err)
		}
		st.cleanup = append(st.cleanup, m.Close)
		redisURL = "redis://" + m.Addr() + "/0"
		b.part("Redis", true, m.Addr())
	} else {
		b.part("Redis", false, hostOf(redisURL))
	}
	b.set["REDIS_URL"] = redisURL
	if st.Redis, err = ops.Redis(ctx, redisURL, b.opt.Logger); err != nil {
		return err
	}
	st.cleanup = append(st.cleanup, func() { st.Redis.Close() })
	st.Store = session.NewStore(st.Redis, session.Options{Prefix: cmp.Or(b.opt.RedisPrefix, b.given("REDIS_KEY_PREFIX"))})
	if b.opt.RedisPrefix != "" {
		b.set["REDIS_KEY_PREFIX"] = b.opt.RedisPrefix
	}
	return nil
}

// nats with JetStream, every acked message on disk.
func (b *builder) nats(context.Context) (err error) {
	st := b.st
	st.NATSURL = cmp.Or(b.opt.NATSURL, b.given("NATS_URL"))
	if st.NATSURL == "" {
		dir := b.opt.DataDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "clinimg-nats-*"); err != nil {
				return fmt.Errorf("data dir: %w", err)
			}
			st.cleanup = append(st.cleanup, func() { os.RemoveAll(dir) })
		}
		ns, err := natsembed.Start(-1, dir)
		if err != nil {
			return err
		}
		st.cleanup = append(st.cleanup, func() { ns.Shutdown(); ns.WaitForShutdown() })
		st.NATSURL = ns.ClientURL()
		b.part("NATS", true, hostOf(st.NATSURL))
	} else {
		b.part("NATS", false, hostOf(st.NATSURL))
	}
	b.set["NATS_URL"] = st.NATSURL
	return nil
}

// s3: the named bucket, else an in-process server that checks signatures,
// with the bucket made.
func (b *builder) s3(ctx context.Context) (err error) {
	st := b.st
	var s3c blob.Config
	if bucket := b.given("S3_BUCKET_NAME"); bucket != "" {
		s3c = config.New(func(k string) string { return b.opt.Env[k] }).ReadCommon("").S3
		b.part("S3", false, cmp.Or(hostOf(s3c.Endpoint), "AWS "+s3c.Region)+" bucket "+bucket)
	} else {
		if st.S3, err = s3local.Start(b.at(0), "AKIALOCALDEVKEY", "local-dev-secret-"+strconv.FormatInt(time.Now().UnixNano(), 36)); err != nil {
			return err
		}
		st.cleanup = append(st.cleanup, func() { st.S3.Close() })
		s3c = st.S3.Config("clinimg-local")
		for k, v := range map[string]string{"S3_BUCKET_NAME": s3c.Bucket, "AWS_REGION": s3c.Region, "S3_ENDPOINT": s3c.Endpoint,
			"S3_PATH_STYLE": "true", "AWS_ACCESS_KEY_ID": s3c.AccessKey, "AWS_SECRET_ACCESS_KEY": s3c.SecretKey} {
			b.set[k] = v
		}
		b.part("S3", true, hostOf(s3c.Endpoint))
	}
	if st.Blob, err = blob.Open(ctx, s3c); err != nil {
		return err
	}
	if st.S3 != nil {
		return st.Blob.EnsureBucket(ctx)
	}
	return nil
}

// alex: the named one (the committer reads every ALEX_* itself), else the
// simulator. Its patients get a test NHI on first sight, so the committer
// can find a photo again by NHI after a crash, as it must on ALEX.
func (b *builder) alex(context.Context) (err error) {
	st := b.st
	if u := b.given("ALEX_API_URL"); u != "" {
		st.ALEXURL = u
		b.part("ALEX", false, hostOf(u))
		return nil
	}
	st.ALEX = alexsim.New(alexsim.Options{Latency: b.opt.ALEXLatency, AutoPatients: true, Logger: b.logger("alexsim")})
	if st.ALEXURL, err = st.ALEX.Start(b.at(0)); err != nil {
		return err
	}
	st.cleanup = append(st.cleanup, func() { st.ALEX.Close() })
	maps.Copy(b.set, st.ALEX.Env(st.ALEXURL))
	b.part("ALEX", true, hostOf(st.ALEXURL))
	return nil
}

// auth, the desktop identity: the named provider, else a development
// issuer.
func (b *builder) auth(context.Context) (err error) {
	if u := b.given("AUTH_JWKS_URL"); u != "" {
		b.part("Auth", false, hostOf(u))
		return nil
	}
	if b.st.Issuer, err = devissuer.New("clinimg-local", "clinimg"); err != nil {
		return err
	}
	// The development issuer verifies instead.
	b.set["AUTH_JWKS_URL"], b.set["AUTH_ISSUER"], b.set["AUTH_AUDIENCE"] = "http://unused.invalid/jwks.json", "clinimg-local", "clinimg"
	b.part("Auth", true, "development issuer (GET /dev/token)")
	return nil
}

// realtime: Ably if a key is given, else the relay's own SSE.
func (b *builder) realtime(context.Context) error {
	b.ably = b.given("ABLY_API_KEY") != ""
	if !b.ably {
		b.set["ABLY_API_KEY"] = ""
		if b.given("REALTIME_SIGNING_KEY") == "" {
			b.set["REALTIME_SIGNING_KEY"] = realtime.GenerateKey("local").Encode()
		}
	}
	return nil
}

// relay starts first: with its own SSE, the API hands its address to
// browsers.
func (b *builder) relay(ctx context.Context) error {
	st := b.st
	rcfg, err := relay.ConfigFromEnv(b.env(map[string]string{"RELAY_ADDR": b.at(b.opt.RelayPort), "OPS_ADDR": b.opsAddr(9092)}))
	if err != nil {
		return fmt.Errorf("relay config: %w", err)
	}
	rcfg.Logger = b.logger("relay")
	rcfg.Registry = b.opt.Registries["relay"]
	sseAddr := make(chan string, 1)
	rcfg.Listening = func(name, addr string) {
		if name == "sse" {
			sseAddr <- addr
		}
	}
	st.run(ctx, "relay", func(ctx context.Context) error { return relay.Run(ctx, rcfg) })
	b.apiEnv = map[string]string{"API_ADDR": b.at(b.opt.APIPort), "OPS_ADDR": b.opsAddr(9091)}
	if b.ably {
		b.part("Ably", false, cmp.Or(hostOf(b.given("ABLY_ENDPOINT")), "Ably"))
		return nil
	}
	a, err := st.await(sseAddr, "relay")
	if err != nil {
		return err
	}
	st.RelayURL = "http://" + a + "/sse"
	if b.given("REALTIME_SSE_URL") == "" {
		b.apiEnv["REALTIME_SSE_URL"] = st.RelayURL
	}
	b.part("Ably", true, "the relay's built-in SSE at "+st.RelayURL)
	return nil
}

func (b *builder) committer(ctx context.Context) error {
	ccfg, err := committer.ConfigFromEnv(b.env(map[string]string{"OPS_ADDR": b.opsAddr(9093)}))
	if err != nil {
		return fmt.Errorf("committer config: %w", err)
	}
	ccfg.Logger = b.logger("committer")
	ccfg.Registry = b.opt.Registries["committer"]
	b.st.run(ctx, "committer", func(ctx context.Context) error { return committer.Run(ctx, ccfg) })
	return nil
}

func (b *builder) thumbnailer(ctx context.Context) error {
	tcfg, err := thumbnailer.ConfigFromEnv(b.env(map[string]string{"OPS_ADDR": b.opsAddr(9094)}))
	if err != nil {
		return fmt.Errorf("thumbnailer config: %w", err)
	}
	tcfg.Logger = b.logger("thumbnailer")
	tcfg.Registry = b.opt.Registries["thumbnailer"]
	b.st.run(ctx, "thumbnailer", func(ctx context.Context) error { return thumbnailer.Run(ctx, tcfg) })
	return nil
}

// api starts last and returns once it and its ops server listen.
func (b *builder) api(ctx context.Context) error {
	st := b.st
	acfg, err := api.ConfigFromEnv(b.env(b.apiEnv))
	if err != nil {
		return fmt.Errorf("api config: %w", err)
	}
	if st.Issuer != nil { // a nil *Issuer in the interface would serve /dev/token
		acfg.DevIssuer = st.Issuer
	}
	acfg.Logger = b.logger("api")
	acfg.Registry = b.opt.Registries["api"]
	apiAddr, opsReady := make(chan string, 1), make(chan string, 1)
	acfg.Ready, acfg.OpsReady = apiAddr, opsReady
	st.run(ctx, "api", func(ctx context.Context) error { return api.Run(ctx, acfg) })
	a, err := st.await(apiAddr, "api")
	if err != nil {
		return err
	}
	st.URL = "http://" + a
	if a, err = st.await(opsReady, "api ops server"); err != nil {
		return err
	}
	st.APIOps = "http://" + a
	return nil
}

// await is the address a service reports listening on, or an error
// naming what did not start within 30 s.
func (s *Stack) await(addr <-chan string, what string) (string, error) {
	select {
	case a := <-addr:
		return a, nil
	case <-time.After(30 * time.Second):
		return "", fmt.Errorf("%s did not start: %w", what, s.Err())
	}
}

// hostOf is a URL's host:port (never its credentials), or "" for no URL.
func hostOf(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(set)"
	}
	return u.Host
}

func (s *Stack) run(ctx context.Context, name string, f func(context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := f(ctx); err != nil && ctx.Err() == nil {
			s.mu.Lock()
			s.errs = append(s.errs, fmt.Errorf("%s: %w", name, err))
			s.mu.Unlock()
		}
	}()
}
