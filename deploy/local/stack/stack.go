// Package stack runs the production topology that deploy/compose.yaml
// describes as processes on this machine, for `make stack` and the
// end-to-end suite: a real redis-server with its append-only file, a
// three-node NATS JetStream cluster (the nats-server the modules pin) with
// the stream at three replicas, versitygw as the S3 server (it checks every
// signature), the ALEX simulator and the development token issuer as
// processes, and the services as their own binaries built each from its own
// module (GOWORK=off), as their Dockerfiles build them: two APIs, two
// relays, two committers and one thumbnailer by default.
//
// compose.yaml is the one source: it is read with compose-go (the loader
// Docker Compose uses), each service gets exactly the environment compose
// gives its container, and only addresses change: a container's name and
// port (redis:6379) become the loopback address of the process playing it,
// a port published on the host (localhost:8080) the first instance's, a
// listen address (":8080") a free port of each instance's, and NATS_URL
// names every node of the cluster.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/clinicalimages/clinimg/pkg/blob"
)

// Options shape the topology.
type Options struct {
	// Root is the repository root (compose.yaml is deploy/compose.yaml).
	Root string
	// Dir holds every process's data and logs (<Dir>/logs/<name>.log).
	Dir string
	// Bin holds the built binaries (default <Dir>/bin); the same Bin
	// across runs only relinks what changed.
	Bin string
	// Env is the operator's variables compose interpolates, over deploy/dev.env:
	// NATS_REPLICAS=3 is always added.
	Env []string
	// Scale is how many processes of a service to run (default: api 2,
	// relay 2, committer compose's replicas, thumbnailer 1).
	Scale map[string]int
	// Progress receives a line per step (nil: none).
	Progress io.Writer
}

// Topology is the running system.
type Topology struct {
	Redis    *Proc
	NATS     []*Proc // three nodes, named nats-1..3 (their server_name)
	S3       *Proc
	ALEX     *Proc
	Auth     *Proc
	Services map[string][]*Proc // api, relay, committer, thumbnailer

	URL      string // the first API's address (PUBLIC_URL)
	ALEXURL  string // the simulator's root (GET /_sim/media)
	AuthURL  string // the token issuer's root (GET /token?userId=)
	RelayURL []string
	NATSURL  string // every node
	RedisURL string
	S3Config blob.Config // what the services use
	Stream   string      // the event stream's name

	// StartTime is how long Start took, builds included.
	StartTime time.Duration
	// BuildTime is how long the builds took.
	BuildTime time.Duration

	project *types.Project
	dir     string
	listen  map[string][]string // service -> its listen variables
	spawned map[string]int
}

// Procs lists every process, outside parts first.
func (t *Topology) Procs() []*Proc {
	out := []*Proc{t.Redis}
	out = append(out, t.NATS...)
	out = append(out, t.S3, t.ALEX, t.Auth)
	for _, name := range []string{"api", "relay", "committer", "thumbnailer"} {
		out = append(out, t.Services[name]...)
	}
	return out
}

// Close stops every process, services first (SIGTERM, then SIGKILL after
// their grace).
func (t *Topology) Close() {
	procs := t.Procs()
	slices.Reverse(procs)
	for _, p := range procs {
		if p != nil {
			p.Stop(40 * time.Second)
		}
	}
}

// services are the compose services built from this repository and run
// as the system, in start order.
var services = []string{"api", "relay", "committer", "thumbnailer"}

// Start builds the binaries and runs the topology, each part ready before
// it returns. On error what started is stopped.
func Start(ctx context.Context, opt Options) (top *Topology, err error) {
	began := time.Now()
	s, err := load(ctx, opt)
	if err != nil {
		return nil, err
	}
	t := s.t
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	s.say("building binaries in %s", s.opt.Bin)
	if err := s.build(); err != nil {
		return nil, err
	}
	t.BuildTime = time.Since(began)
	s.say("built in %s", t.BuildTime.Round(time.Millisecond))
	for _, step := range []func() error{s.allocate, s.redis, s.nats, s.s3, s.s3Init, s.standIns, s.services} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	t.StartTime = time.Since(began)
	s.say("ready in %s (builds %s)", t.StartTime.Round(time.Millisecond), t.BuildTime.Round(time.Millisecond))
	return t, nil
}

// setup is a Topology being made: compose's project and what each step
// decides for the steps after it.
type setup struct {
	opt  Options
	env  []string // what compose interpolated
	p    *types.Project
	r    roles
	t    *Topology
	bins map[string]string // binary name or compose service -> path

	a           addresses
	infra       map[string]string // outside part's compose service -> 127.0.0.1:P
	natsClient  []string
	natsCluster []string
	inst        map[string][]instance
	inits       []*Proc // compose's one-shot set-ups, run before the services
}

// instance is one process of a service.
type instance struct {
	listen map[string]string // variable -> 127.0.0.1:P
}

// load makes the directories and reads compose.yaml with deploy/dev.env
// (the env file of the sim profile, as `--env-file deploy/dev.env`), the
// caller's variables winning over it.
func load(ctx context.Context, opt Options) (*setup, error) {
	if opt.Bin == "" {
		opt.Bin = filepath.Join(opt.Dir, "bin")
	}
	for _, d := range []string{opt.Dir, opt.Bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	env, err := readEnvFile(filepath.Join(opt.Root, "deploy", "dev.env"))
	if err != nil {
		return nil, err
	}
	env = append(append(env, "NATS_REPLICAS=3"), opt.Env...)
	p, err := loadCompose(ctx, filepath.Join(opt.Root, "deploy", "compose.yaml"), env)
	if err != nil {
		return nil, err
	}
	r, err := findRoles(p)
	if err != nil {
		return nil, err
	}
	t := &Topology{project: p, dir: opt.Dir, Services: map[string][]*Proc{}}
	return &setup{opt: opt, env: env, p: p, r: r, t: t, bins: map[string]string{}}, nil
}

func (s *setup) say(format string, a ...any) {
	if s.opt.Progress != nil {
		fmt.Fprintf(s.opt.Progress, "stack: "+format+"\n", a...)
	}
}

// build makes the services and stand-ins as their Dockerfiles build them,
// nats-server from the pinned module, versitygw from the module proxy; two
// at a time.
func (s *setup) build() error {
	b := &builder{dir: s.opt.Bin}
	var g errgroup.Group
	g.SetLimit(2)
	var mu sync.Mutex
	set := func(k, v string) { mu.Lock(); s.bins[k] = v; mu.Unlock() }
	for _, name := range append(slices.Clone(services), s.r.alex, s.r.auth) {
		svc := s.p.Services[name]
		if svc.Build == nil {
			return fmt.Errorf("compose service %s is not built from this repository", name)
		}
		step, err := readBuildStep(svc)
		if err != nil {
			return err
		}
		g.Go(func() error {
			path, err := b.service(step)
			set(name, path)
			return err
		})
	}
	g.Go(func() error {
		path, err := b.natsServer(filepath.Join(s.opt.Root, "deploy", "local"))
		set("nats-server", path)
		return err
	})
	g.Go(func() error {
		path, err := b.versitygw()
		set("versitygw", path)
		return err
	})
	return g.Wait()
}

// allocate gives everything that listens a free port: the outside parts,
// the NATS nodes, then each instance of a service its own port for each
// listen address.
func (s *setup) allocate() error {
	s.a = addresses{internal: map[string]string{}, published: map[string]string{}, hosts: []string{"127.0.0.1"}, natsHost: s.r.nats}
	if h := envValue(s.env, "S3_PUBLIC_HOST"); h != "" {
		s.a.hosts = append(s.a.hosts, h)
	}
	s.infra = map[string]string{}
	for _, name := range []string{s.r.redis, s.r.s3, s.r.alex, s.r.auth} {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		s.infra[name] = addr
		for _, port := range targetPorts(s.p.Services[name]) {
			s.a.internal[name+":"+port] = addr
		}
		for _, port := range publishes(s.p.Services[name]) {
			s.a.published[port] = addr
		}
	}
	for range 3 {
		c, err := freeAddr()
		if err != nil {
			return err
		}
		k, err := freeAddr()
		if err != nil {
			return err
		}
		s.natsClient, s.natsCluster = append(s.natsClient, c), append(s.natsCluster, k)
	}
	s.a.natsURLs = natsList(s.natsClient)
	s.a.internal[s.r.nats+":4222"] = s.natsClient[0]
	s.t.NATSURL = s.a.natsURLs
	return s.allocateInstances()
}

// scale is how many processes of each service run: api 2, relay 2,
// committer compose's replicas (at least 2), thumbnailer 1, unless
// Options.Scale says otherwise.
func (s *setup) scale() map[string]int {
	scale := map[string]int{"api": 2, "relay": 2, "committer": 1, "thumbnailer": 1}
	if c := s.p.Services["committer"]; c.Deploy != nil && c.Deploy.Replicas != nil {
		scale["committer"] = max(*c.Deploy.Replicas, 2)
	} else {
		scale["committer"] = 2
	}
	for k, v := range s.opt.Scale {
		scale[k] = v
	}
	return scale
}

// allocateInstances gives each instance of a service its own port for each
// listen address; the first instance's stand for the service's compose
// name and published ports.
func (s *setup) allocateInstances() error {
	t, scale := s.t, s.scale()
	s.inst = map[string][]instance{}
	t.listen = map[string][]string{}
	t.spawned = map[string]int{}
	for _, name := range services {
		for i := range scale[name] {
			in := instance{listen: map[string]string{}}
			for k, v := range s.p.Services[name].Environment {
				if v == nil {
					continue
				}
				port, ok := targetPort(*v)
				if !ok {
					continue
				}
				addr, err := freeAddr()
				if err != nil {
					return err
				}
				in.listen[k] = addr
				if i == 0 {
					t.listen[name] = append(t.listen[name], k)
					s.a.internal[name+":"+strconv.Itoa(port)] = addr
					if slices.Contains(publishes(s.p.Services[name]), strconv.Itoa(port)) {
						s.a.published[strconv.Itoa(port)] = addr
					}
				}
			}
			s.inst[name] = append(s.inst[name], in)
		}
	}
	return nil
}

// envFor is the environment compose gives a container, addresses
// rewritten and listen addresses the instance's.
func (s *setup) envFor(name string, listen map[string]string) ([]string, error) {
	out := baseEnv()
	var keys []string
	for k := range s.p.Services[name].Environment {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := s.p.Services[name].Environment[k]
		if v == nil {
			continue
		}
		val := *v
		if addr, ok := listen[k]; ok {
			val = addr
		} else {
			var err error
			if val, err = s.a.rewrite(k, val); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		out = append(out, k+"="+val)
	}
	return out, nil
}

func (s *setup) newProc(name, service, bin string, args, env []string, ready func(context.Context) error) *Proc {
	return &Proc{Name: name, Service: service, bin: bin, args: args, Env: env, logPath: filepath.Join(s.opt.Dir, "logs", name+".log"), ready: ready}
}

// redis runs compose's command, with this machine's port and directory.
func (s *setup) redis() error {
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("redis-server is not installed (make deps installs it): %w", err)
	}
	rs := s.p.Services[s.r.redis]
	if len(rs.Command) == 0 || rs.Command[0] != "redis-server" {
		return fmt.Errorf("compose %s command %v: want redis-server and its arguments", s.r.redis, rs.Command)
	}
	redisDir := filepath.Join(s.opt.Dir, "redis")
	if err := os.MkdirAll(redisDir, 0o755); err != nil {
		return err
	}
	addr := s.infra[s.r.redis]
	host, port, _ := net.SplitHostPort(addr)
	s.t.RedisURL = "redis://" + addr + "/0"
	s.t.Redis = s.newProc("redis", s.r.redis, redisBin, append(slices.Clone(rs.Command[1:]), "--bind", host, "--port", port, "--dir", redisDir, "--save", ""),
		baseEnv(), func(ctx context.Context) error {
			c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
			defer c.Close()
			return c.Ping(ctx).Err()
		})
	return nil
}

// nats runs three nodes with compose's JetStream settings.
func (s *setup) nats() error {
	conf, err := natsSettings(s.p.Services[s.r.nats])
	if err != nil {
		return err
	}
	for i := range 3 {
		name := fmt.Sprintf("nats-%d", i+1)
		dir := filepath.Join(s.opt.Dir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		var routes []string
		for j, k := range s.natsCluster {
			if j != i {
				routes = append(routes, strconv.Quote("nats-route://"+k))
			}
		}
		text := fmt.Sprintf("server_name: %q\nlisten: %q\njetstream {\n  store_dir: %q\n%s}\ncluster {\n  name: \"clinimg\"\n  listen: %q\n  routes: [%s]\n}\n",
			name, s.natsClient[i], filepath.Join(dir, "js"), conf, s.natsCluster[i], strings.Join(routes, ", "))
		file := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			return err
		}
		url := "nats://" + s.natsClient[i]
		s.t.NATS = append(s.t.NATS, s.newProc(name, s.r.nats, s.bins["nats-server"], []string{"-c", file}, baseEnv(), func(ctx context.Context) error {
			nc, err := nats.Connect(url, nats.Timeout(time.Second))
			if err != nil {
				return err
			}
			defer nc.Close()
			return jetStreamReady(ctx, nc)
		}))
	}
	return nil
}

// s3 runs versitygw with compose's environment, its volumes directories
// here.
func (s *setup) s3() error {
	t := s.t
	ccfg := s.p.Services["committer"].Environment
	get := func(m types.MappingWithEquals, k string) string {
		if v := m[k]; v != nil {
			return *v
		}
		return ""
	}
	t.S3Config = blob.Config{Bucket: get(ccfg, "S3_BUCKET_NAME"), Region: get(ccfg, "AWS_REGION"), Endpoint: "http://" + s.infra[s.r.s3],
		AccessKey: get(ccfg, "AWS_ACCESS_KEY_ID"), SecretKey: get(ccfg, "AWS_SECRET_ACCESS_KEY"), PathStyle: true}
	s3s := s.p.Services[s.r.s3]
	s3Listen := map[string]string{}
	for k, v := range s3s.Environment {
		if v != nil {
			if _, ok := targetPort(*v); ok {
				s3Listen[k] = s.infra[s.r.s3]
			}
		}
	}
	s3Env, err := s.envFor(s.r.s3, s3Listen)
	if err != nil {
		return err
	}
	if s3Env, err = mountVolumes(s3s, s3Env, s.opt.Dir); err != nil {
		return err
	}
	health := envValue(s3Env, "VGW_HEALTH")
	if health == "" {
		return fmt.Errorf("compose %s sets no VGW_HEALTH", s.r.s3)
	}
	entry, err := versitygwEntrypoint()
	if err != nil {
		return err
	}
	t.S3 = s.newProc("s3", s.r.s3, "/bin/sh", []string{entry}, append(s3Env, "VGW_BINARY="+s.bins["versitygw"]),
		func(ctx context.Context) error { return httpOK(ctx, t.S3Config.Endpoint+health) })
	return nil
}

// s3Init prepares compose's one-shot set-ups the API waits for (s3-init:
// the services' user and the bucket), with versitygw as their admin client.
func (s *setup) s3Init() error {
	for name, dep := range s.p.Services["api"].DependsOn {
		if dep.Condition != types.ServiceConditionCompletedSuccessfully {
			continue
		}
		svc := s.p.Services[name]
		env, err := s.envFor(name, nil)
		if err != nil {
			return err
		}
		if env, err = mountVolumes(svc, env, s.opt.Dir); err != nil {
			return err
		}
		// The image's own binary (versitygw) is on its PATH.
		env = append(env, "PATH="+s.opt.Bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		args := append(slices.Clone(svc.Entrypoint), svc.Command...)
		if len(args) == 0 {
			return fmt.Errorf("compose %s: no entrypoint or command", name)
		}
		for i, a := range args {
			args[i] = mapPath(svc, a, s.opt.Dir)
		}
		bin, err := exec.LookPath(args[0])
		if err != nil {
			return fmt.Errorf("compose %s: %w", name, err)
		}
		s.inits = append(s.inits, s.newProc(name, name, bin, args[1:], env, nil))
	}
	return nil
}

// standIns are the ALEX simulator and the token issuer.
func (s *setup) standIns() error {
	t := s.t
	alexEnv, err := s.envFor(s.r.alex, map[string]string{"ALEXSIM_ADDR": s.infra[s.r.alex]})
	if err != nil {
		return err
	}
	t.ALEXURL = "http://" + s.infra[s.r.alex]
	t.ALEX = s.newProc("alexsim", s.r.alex, s.bins[s.r.alex], nil, alexEnv, func(ctx context.Context) error { return httpOK(ctx, t.ALEXURL+"/healthz") })
	authEnv, err := s.envFor(s.r.auth, map[string]string{"DEVISSUER_ADDR": s.infra[s.r.auth]})
	if err != nil {
		return err
	}
	t.AuthURL = "http://" + s.infra[s.r.auth]
	t.Auth = s.newProc("devissuer", s.r.auth, s.bins[s.r.auth], nil, authEnv, func(ctx context.Context) error { return httpOK(ctx, t.AuthURL+"/healthz") })
	return nil
}

// services makes each instance's process, ready when its /readyz is.
func (s *setup) services() error {
	t := s.t
	for _, name := range services {
		for i, in := range s.inst[name] {
			env, err := s.envFor(name, in.listen)
			if err != nil {
				return err
			}
			pr := s.newProc(fmt.Sprintf("%s-%d", name, i+1), name, s.bins[name], nil, env, nil)
			ops := "http://" + pr.Getenv("OPS_ADDR")
			pr.ready = func(ctx context.Context) error { return httpOK(ctx, ops+"/readyz") }
			t.Services[name] = append(t.Services[name], pr)
		}
	}
	api := t.Services["api"][0]
	t.URL = api.Getenv("PUBLIC_URL")
	for _, rl := range t.Services["relay"] {
		t.RelayURL = append(t.RelayURL, "http://"+rl.Getenv("RELAY_ADDR"))
	}
	t.Stream = envValue(api.Env, "NATS_STREAM")
	if t.Stream == "" {
		t.Stream = "CLINIMG"
	}
	return nil
}

// start runs the outside parts, the bucket (compose's s3-init), then the
// services, each waited for.
func (s *setup) start(ctx context.Context) error {
	t := s.t
	s.say("starting redis, a three-node NATS cluster, versitygw, the ALEX simulator and the token issuer")
	if err := startAll(ctx, append([]*Proc{t.Redis, t.S3, t.ALEX, t.Auth}, t.NATS...)); err != nil {
		return err
	}
	for _, in := range s.inits {
		s.say("running %s", in.Name)
		if err := runOnce(ctx, in); err != nil {
			return err
		}
	}
	var svc []*Proc
	for _, name := range services {
		svc = append(svc, t.Services[name]...)
	}
	s.say("starting %d service processes", len(svc))
	return startAll(ctx, svc)
}

// startAll starts every process, then waits for each to be ready.
func startAll(ctx context.Context, ps []*Proc) error {
	for _, pr := range ps {
		if err := pr.Start(); err != nil {
			return err
		}
	}
	var g errgroup.Group
	for _, pr := range ps {
		g.Go(func() error { return pr.Ready(ctx) })
	}
	return g.Wait()
}

// runOnce runs a one-shot process to its end; it must exit 0.
func runOnce(ctx context.Context, in *Proc) error {
	if err := in.Start(); err != nil {
		return err
	}
	select {
	case <-in.Exited():
	case <-ctx.Done():
		return ctx.Err()
	}
	if c := in.ExitCode(); c != 0 {
		return fmt.Errorf("%s exited %d (see %s)", in.Name, c, in.LogPath())
	}
	return nil
}

// Spawn makes (without starting) one more process of a compose service:
// the first instance's environment with listen addresses of its own.
func (t *Topology) Spawn(service string) (*Proc, error) {
	first := t.Services[service]
	if len(first) == 0 {
		return nil, fmt.Errorf("no %s in the topology", service)
	}
	t.spawned[service]++
	p := &Proc{Name: fmt.Sprintf("%s-extra-%d", service, t.spawned[service]), Service: service, bin: first[0].bin, Env: slices.Clone(first[0].Env)}
	p.logPath = filepath.Join(t.dir, "logs", p.Name+".log")
	for _, k := range t.listen[service] {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		p.Env = append(p.Env, k+"="+addr)
	}
	ops := "http://" + p.Getenv("OPS_ADDR")
	p.ready = func(ctx context.Context) error { return httpOK(ctx, ops+"/readyz") }
	return p, nil
}

// readEnvFile reads NAME=value lines, skipping blank lines and comments.
func readEnvFile(path string) ([]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(string(raw), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if !strings.Contains(l, "=") {
			return nil, fmt.Errorf("%s: %q is not NAME=value", path, l)
		}
		out = append(out, l)
	}
	return out, nil
}

// mountVolumes gives each of a service's volumes a directory here: a bind
// mount its source, a named volume <dir>/volumes/<name>. A variable that
// names a path inside a volume names the same path here.
func mountVolumes(s types.ServiceConfig, env []string, dir string) ([]string, error) {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeVolume {
			if err := os.MkdirAll(filepath.Join(dir, "volumes", v.Source), 0o755); err != nil {
				return nil, err
			}
		}
	}
	out := make([]string, len(env))
	for i, kv := range env {
		k, val, _ := cut(kv)
		out[i] = k + "=" + mapPath(s, val, dir)
	}
	return out, nil
}

// mapPath maps a path inside a service's container to this machine's.
func mapPath(s types.ServiceConfig, p, dir string) string {
	for _, v := range s.Volumes {
		if v.Target == "" || (p != v.Target && !strings.HasPrefix(p, v.Target+"/")) {
			continue
		}
		local := v.Source
		if v.Type == types.VolumeTypeVolume {
			local = filepath.Join(dir, "volumes", v.Source)
		}
		return local + strings.TrimPrefix(p, v.Target)
	}
	return p
}

// natsSettings is the JetStream sync setting of compose's nats.conf, read
// with the server's own parser.
func natsSettings(s types.ServiceConfig) (string, error) {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && strings.HasSuffix(v.Source, ".conf") {
			opts, err := server.ProcessConfigFile(v.Source)
			if err != nil {
				return "", fmt.Errorf("%s: %w", v.Source, err)
			}
			switch {
			case opts.SyncAlways:
				return "  sync_interval: always\n", nil
			case opts.SyncInterval > 0:
				return fmt.Sprintf("  sync_interval: %q\n", opts.SyncInterval.String()), nil
			}
			return "", nil
		}
	}
	return "", errors.New("compose's nats service mounts no .conf file")
}

// targetPorts are the ports a service's container listens on: those it
// exposes or publishes, and those its health check calls.
func targetPorts(s types.ServiceConfig) []string {
	var out []string
	for _, p := range s.Ports {
		out = append(out, strconv.Itoa(int(p.Target)))
	}
	for _, e := range s.Expose {
		out = append(out, e)
	}
	if s.HealthCheck != nil {
		for _, w := range s.HealthCheck.Test {
			for _, m := range hostPort.FindAllStringSubmatch(w, -1) {
				out = append(out, m[2])
			}
		}
	}
	for _, c := range s.Command {
		for _, m := range hostPort.FindAllStringSubmatch(c, -1) {
			out = append(out, m[2])
		}
	}
	// A redis container listens on its default port.
	if len(s.Command) > 0 && s.Command[0] == "redis-server" {
		out = append(out, "6379")
	}
	for k, v := range s.Environment {
		if v != nil && strings.HasSuffix(k, "_ADDR") {
			if p, ok := targetPort(*v); ok {
				out = append(out, strconv.Itoa(p))
			}
		}
	}
	return out
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := cut(env[i]); ok && k == key {
			return v
		}
	}
	return ""
}

// baseEnv is what a container has besides compose's variables.
func baseEnv() []string {
	out := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	if v := os.Getenv("TMPDIR"); v != "" {
		out = append(out, "TMPDIR="+v)
	}
	return out
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func httpOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
