// Package local runs the whole Clinical Images system in one process on
// embedded parts: a real NATS server with JetStream, an S3 server that checks
// SigV4 signatures, an in-process Redis-compatible server (unless REDIS_URL
// points at a real one), the ALEX simulator, and a development token issuer.
// The four services run the same Run functions production runs. It is for
// `make run`, demos and end-to-end tests; nothing in it is for production.
package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/alexsim"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/jwtauth"
	"github.com/clinicalimages/clinimg/pkg/natsembed"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/s3local"
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
	// detector watches our code rather than the server's).
	NATSURL string
	// RedisURL uses a real Redis instead of the in-process one.
	RedisURL string
	// RedisPrefix prefixes every key (useful on a shared Redis).
	RedisPrefix string
	// ALEXLatency slows every simulated ALEX request.
	ALEXLatency time.Duration
	// Logger receives every service's logs (default JSON on stderr at info).
	Logger *slog.Logger
	// Env overrides any service setting by its environment name.
	Env map[string]string
	// Registries, keyed by service name (api, relay, committer,
	// thumbnailer), receive that service's metrics instead of a registry of
	// its own; tests read the counters from them.
	Registries map[string]*prometheus.Registry
}

// Stack is a running system.
type Stack struct {
	URL      string // the API and the pages
	APIOps   string // the API's operations server: /healthz, /readyz, /metrics
	RelayURL string // the built-in SSE endpoint
	ALEXURL  string

	ALEX    *alexsim.Server
	S3      *s3local.Server
	Blob    *blob.Store
	Redis   *redis.Client
	Store   *session.Store
	NATSURL string
	Issuer  *jwtauth.Issuer

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
		opt.Logger = ops.Logger(os.Stderr, "local", "info")
	}
	ctx, cancel := context.WithCancel(ctx)
	st := &Stack{cancel: cancel}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	at := func(port int) string { return net.JoinHostPort(opt.Host, strconv.Itoa(port)) }

	// NATS with JetStream, every acked message on disk.
	st.NATSURL = opt.NATSURL
	if st.NATSURL == "" {
		dir := opt.DataDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "clinimg-nats-*"); err != nil {
				return nil, fmt.Errorf("data dir: %w", err)
			}
			st.cleanup = append(st.cleanup, func() { os.RemoveAll(dir) })
		}
		ns, err := natsembed.Start(-1, dir)
		if err != nil {
			return nil, err
		}
		st.cleanup = append(st.cleanup, func() { ns.Shutdown(); ns.WaitForShutdown() })
		st.NATSURL = ns.ClientURL()
	}

	// Redis: the real one if asked, else miniredis in process.
	redisURL := opt.RedisURL
	if redisURL == "" {
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("embedded redis: %w", err)
		}
		st.cleanup = append(st.cleanup, m.Close)
		redisURL = "redis://" + m.Addr() + "/0"
	}
	if st.Redis, err = ops.Redis(ctx, redisURL); err != nil {
		return nil, err
	}
	st.cleanup = append(st.cleanup, func() { st.Redis.Close() })
	st.Store = session.NewStore(st.Redis, session.Options{Prefix: opt.RedisPrefix})

	// S3 that checks signatures, with the bucket made.
	if st.S3, err = s3local.Start(at(0), "AKIALOCALDEVKEY", "local-dev-secret-"+strconv.FormatInt(time.Now().UnixNano(), 36)); err != nil {
		return nil, err
	}
	st.cleanup = append(st.cleanup, func() { st.S3.Close() })
	if st.Blob, err = blob.Open(ctx, st.S3.Config("clinimg-local")); err != nil {
		return nil, err
	}
	if err := st.Blob.EnsureBucket(ctx); err != nil {
		return nil, err
	}

	// ALEX simulator.
	// Patients get a test NHI on first sight, so the committer can find a
	// photo again by NHI after a crash, as it must on ALEX.
	st.ALEX = alexsim.New(alexsim.Options{Latency: opt.ALEXLatency, AutoPatients: true, Logger: opt.Logger.With("service", "alexsim")})
	if st.ALEXURL, err = st.ALEX.Start(at(0)); err != nil {
		return nil, err
	}
	st.cleanup = append(st.cleanup, func() { st.ALEX.Close() })

	if st.Issuer, err = jwtauth.NewIssuer("clinimg-local", "clinimg"); err != nil {
		return nil, err
	}
	signing := realtime.GenerateKey("local")

	opsAddr := func(port int) string {
		if opt.OpsPorts {
			return at(port)
		}
		return at(0)
	}
	s3c := st.S3.Config("clinimg-local")
	common := map[string]string{
		"REDIS_URL": redisURL, "REDIS_KEY_PREFIX": opt.RedisPrefix, "NATS_URL": st.NATSURL,
		"S3_BUCKET_NAME": s3c.Bucket, "AWS_REGION": s3c.Region, "S3_ENDPOINT": s3c.Endpoint, "S3_PATH_STYLE": "true",
		"AWS_ACCESS_KEY_ID": s3c.AccessKey, "AWS_SECRET_ACCESS_KEY": s3c.SecretKey,
		"REALTIME_SIGNING_KEY": signing.Encode(), "LOG_LEVEL": "info",
	}
	env := func(extra map[string]string) func(string) string {
		return func(k string) string {
			if v, ok := opt.Env[k]; ok {
				return v
			}
			if v, ok := extra[k]; ok {
				return v
			}
			return common[k]
		}
	}
	logger := func(name string) *slog.Logger { return opt.Logger.With("service", name) }

	// The relay first: the API hands its SSE address to browsers.
	rcfg, err := relay.ConfigFromEnv(env(map[string]string{"RELAY_ADDR": at(opt.RelayPort), "OPS_ADDR": opsAddr(9092)}))
	if err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	rcfg.Logger = logger("relay")
	rcfg.Registry = opt.Registries["relay"]
	sseAddr := make(chan string, 1)
	rcfg.Listening = func(name, addr string) {
		if name == "sse" {
			sseAddr <- addr
		}
	}
	st.run(ctx, "relay", func(ctx context.Context) error { return relay.Run(ctx, rcfg) })
	select {
	case a := <-sseAddr:
		st.RelayURL = "http://" + a + "/sse"
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("relay did not start: %w", st.Err())
	}

	ccfg, err := committer.ConfigFromEnv(env(merge(st.ALEX.Env(st.ALEXURL), map[string]string{"OPS_ADDR": opsAddr(9093)})))
	if err != nil {
		return nil, fmt.Errorf("committer config: %w", err)
	}
	ccfg.Logger = logger("committer")
	ccfg.Registry = opt.Registries["committer"]
	st.run(ctx, "committer", func(ctx context.Context) error { return committer.Run(ctx, ccfg) })

	tcfg, err := thumbnailer.ConfigFromEnv(env(map[string]string{"OPS_ADDR": opsAddr(9094)}))
	if err != nil {
		return nil, fmt.Errorf("thumbnailer config: %w", err)
	}
	tcfg.Logger = logger("thumbnailer")
	tcfg.Registry = opt.Registries["thumbnailer"]
	st.run(ctx, "thumbnailer", func(ctx context.Context) error { return thumbnailer.Run(ctx, tcfg) })

	acfg, err := api.ConfigFromEnv(env(map[string]string{
		"API_ADDR": at(opt.APIPort), "OPS_ADDR": opsAddr(9091), "REALTIME_SSE_URL": st.RelayURL,
		"AUTH_JWKS_URL": "http://unused.invalid/jwks.json", // the development issuer verifies instead
		"AUTH_ISSUER":   "clinimg-local", "AUTH_AUDIENCE": "clinimg",
	}))
	if err != nil {
		return nil, fmt.Errorf("api config: %w", err)
	}
	acfg.DevIssuer = st.Issuer
	acfg.Logger = logger("api")
	acfg.Registry = opt.Registries["api"]
	apiAddr, opsReady := make(chan string, 1), make(chan string, 1)
	acfg.Ready, acfg.OpsReady = apiAddr, opsReady
	st.run(ctx, "api", func(ctx context.Context) error { return api.Run(ctx, acfg) })
	select {
	case a := <-apiAddr:
		st.URL = "http://" + a
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("api did not start: %w", st.Err())
	}
	select {
	case a := <-opsReady:
		st.APIOps = "http://" + a
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("api ops server did not start: %w", st.Err())
	}
	return st, nil
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

func merge(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
