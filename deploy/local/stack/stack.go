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
	say := func(format string, a ...any) {
		if opt.Progress != nil {
			fmt.Fprintf(opt.Progress, "stack: "+format+"\n", a...)
		}
	}
	if opt.Bin == "" {
		opt.Bin = filepath.Join(opt.Dir, "bin")
	}
	for _, d := range []string{opt.Dir, opt.Bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// deploy/dev.env is the env file of the sim profile (as `--env-file
	// deploy/dev.env`); the caller's variables win over it.
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
	defer func() {
		if err != nil {
			t.Close()
		}
	}()

	// Builds: the services and stand-ins as their Dockerfiles build them,
	// nats-server from the pinned module, versitygw from the module proxy.
	say("building binaries in %s", opt.Bin)
	b := &builder{dir: opt.Bin}
	bins := map[string]string{}
	var g errgroup.Group
	g.SetLimit(2)
	var binMu sync.Mutex
	setBin := func(k, v string) { binMu.Lock(); bins[k] = v; binMu.Unlock() }
	for _, name := range append(slices.Clone(services), r.alex, r.auth) {
		s := p.Services[name]
		if s.Build == nil {
			return nil, fmt.Errorf("compose service %s is not built from this repository", name)
		}
		step, err := readBuildStep(s)
		if err != nil {
			return nil, err
		}
		g.Go(func() error {
			path, err := b.service(step)
			setBin(name, path)
			return err
		})
	}
	g.Go(func() error {
		path, err := b.natsServer(filepath.Join(opt.Root, "deploy", "local"))
		setBin("nats-server", path)
		return err
	})
	g.Go(func() error {
		path, err := b.versitygw()
		setBin("versitygw", path)
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	t.BuildTime = time.Since(began)
	say("built in %s", t.BuildTime.Round(time.Millisecond))

	// Addresses: a free port for everything that listens.
	a := addresses{internal: map[string]string{}, published: map[string]string{}, hosts: []string{"127.0.0.1"}, natsHost: r.nats}
	if h := envValue(env, "S3_PUBLIC_HOST"); h != "" {
		a.hosts = append(a.hosts, h)
	}
	free := func() (string, error) { return freeAddr() }
	infra := map[string]string{}
	for _, name := range []string{r.redis, r.s3, r.alex, r.auth} {
		addr, err := free()
		if err != nil {
			return nil, err
		}
		infra[name] = addr
		for _, port := range targetPorts(p.Services[name]) {
			a.internal[name+":"+port] = addr
		}
		for _, port := range publishes(p.Services[name]) {
			a.published[port] = addr
		}
	}
	var natsClient, natsCluster []string
	for range 3 {
		c, err := free()
		if err != nil {
			return nil, err
		}
		k, err := free()
		if err != nil {
			return nil, err
		}
		natsClient, natsCluster = append(natsClient, c), append(natsCluster, k)
	}
	a.natsURLs = natsList(natsClient)
	a.internal[r.nats+":4222"] = natsClient[0]
	t.NATSURL = a.natsURLs

	// Each instance of a service: its own port for each listen address.
	scale := map[string]int{"api": 2, "relay": 2, "committer": 1, "thumbnailer": 1}
	if c := p.Services["committer"]; c.Deploy != nil && c.Deploy.Replicas != nil {
		scale["committer"] = max(*c.Deploy.Replicas, 2)
	} else {
		scale["committer"] = 2
	}
	for k, v := range opt.Scale {
		scale[k] = v
	}
	type instance struct {
		listen map[string]string // variable -> 127.0.0.1:P
	}
	inst := map[string][]instance{}
	t.listen = map[string][]string{}
	t.spawned = map[string]int{}
	for _, name := range services {
		for i := range scale[name] {
			in := instance{listen: map[string]string{}}
			for k, v := range p.Services[name].Environment {
				if v == nil {
					continue
				}
				if port, ok := targetPort(*v); ok {
					if i == 0 {
						t.listen[name] = append(t.listen[name], k)
					}
					addr, err := free()
					if err != nil {
						return nil, err
					}
					in.listen[k] = addr
					if i == 0 {
						a.internal[name+":"+strconv.Itoa(port)] = addr
						if slices.Contains(publishes(p.Services[name]), strconv.Itoa(port)) {
							a.published[strconv.Itoa(port)] = addr
						}
					}
				}
			}
			inst[name] = append(inst[name], in)
		}
	}

	// The environment compose gives a container, addresses rewritten.
	envFor := func(name string, listen map[string]string) ([]string, error) {
		out := baseEnv()
		var keys []string
		for k := range p.Services[name].Environment {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v := p.Services[name].Environment[k]
			if v == nil {
				continue
			}
			val := *v
			if addr, ok := listen[k]; ok {
				val = addr
			} else if val, err = a.rewrite(k, val); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			out = append(out, k+"="+val)
		}
		return out, nil
	}
	logs := filepath.Join(opt.Dir, "logs")
	newProc := func(name, service, bin string, args, env []string, ready func(context.Context) error) *Proc {
		return &Proc{Name: name, Service: service, bin: bin, args: args, Env: env, logPath: filepath.Join(logs, name+".log"), ready: ready}
	}

	// Redis: compose's command, with this machine's port and directory.
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is not installed (make deps installs it): %w", err)
	}
	rs := p.Services[r.redis]
	if len(rs.Command) == 0 || rs.Command[0] != "redis-server" {
		return nil, fmt.Errorf("compose %s command %v: want redis-server and its arguments", r.redis, rs.Command)
	}
	redisDir := filepath.Join(opt.Dir, "redis")
	if err := os.MkdirAll(redisDir, 0o755); err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(infra[r.redis])
	t.RedisURL = "redis://" + infra[r.redis] + "/0"
	t.Redis = newProc("redis", r.redis, redisBin, append(slices.Clone(rs.Command[1:]), "--bind", host, "--port", port, "--dir", redisDir, "--save", ""),
		baseEnv(), func(ctx context.Context) error {
			c := redis.NewClient(&redis.Options{Addr: infra[r.redis], MaxRetries: -1})
			defer c.Close()
			return c.Ping(ctx).Err()
		})

	// NATS: three nodes with compose's JetStream settings.
	conf, err := natsSettings(p.Services[r.nats])
	if err != nil {
		return nil, err
	}
	for i := range 3 {
		name := fmt.Sprintf("nats-%d", i+1)
		dir := filepath.Join(opt.Dir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		var routes []string
		for j, k := range natsCluster {
			if j != i {
				routes = append(routes, strconv.Quote("nats-route://"+k))
			}
		}
		text := fmt.Sprintf("server_name: %q\nlisten: %q\njetstream {\n  store_dir: %q\n%s}\ncluster {\n  name: \"clinimg\"\n  listen: %q\n  routes: [%s]\n}\n",
			name, natsClient[i], filepath.Join(dir, "js"), conf, natsCluster[i], strings.Join(routes, ", "))
		file := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			return nil, err
		}
		url := "nats://" + natsClient[i]
		t.NATS = append(t.NATS, newProc(name, r.nats, bins["nats-server"], []string{"-c", file}, baseEnv(), func(ctx context.Context) error {
			nc, err := nats.Connect(url, nats.Timeout(time.Second))
			if err != nil {
				return err
			}
			defer nc.Close()
			return jetStreamReady(ctx, nc)
		}))
	}

	// S3: versitygw with compose's environment, its volumes directories
	// here; then compose's one-shot set-up (s3-init: the services' user and
	// the bucket) with the same binary as its admin client.
	ccfg := p.Services["committer"].Environment
	get := func(m types.MappingWithEquals, k string) string {
		if v := m[k]; v != nil {
			return *v
		}
		return ""
	}
	t.S3Config = blob.Config{Bucket: get(ccfg, "S3_BUCKET_NAME"), Region: get(ccfg, "AWS_REGION"), Endpoint: "http://" + infra[r.s3],
		AccessKey: get(ccfg, "AWS_ACCESS_KEY_ID"), SecretKey: get(ccfg, "AWS_SECRET_ACCESS_KEY"), PathStyle: true}
	s3s := p.Services[r.s3]
	s3Listen := map[string]string{}
	for k, v := range s3s.Environment {
		if v != nil {
			if _, ok := targetPort(*v); ok {
				s3Listen[k] = infra[r.s3]
			}
		}
	}
	s3Env, err := envFor(r.s3, s3Listen)
	if err != nil {
		return nil, err
	}
	if s3Env, err = mountVolumes(s3s, s3Env, opt.Dir); err != nil {
		return nil, err
	}
	health := envValue(s3Env, "VGW_HEALTH")
	if health == "" {
		return nil, fmt.Errorf("compose %s sets no VGW_HEALTH", r.s3)
	}
	entry, err := versitygwEntrypoint()
	if err != nil {
		return nil, err
	}
	t.S3 = newProc("s3", r.s3, "/bin/sh", []string{entry}, append(s3Env, "VGW_BINARY="+bins["versitygw"]),
		func(ctx context.Context) error { return httpOK(ctx, t.S3Config.Endpoint+health) })
	var inits []*Proc
	for name, dep := range p.Services["api"].DependsOn {
		if dep.Condition != types.ServiceConditionCompletedSuccessfully {
			continue
		}
		s := p.Services[name]
		env, err := envFor(name, nil)
		if err != nil {
			return nil, err
		}
		if env, err = mountVolumes(s, env, opt.Dir); err != nil {
			return nil, err
		}
		// The image's own binary (versitygw) is on its PATH.
		env = append(env, "PATH="+opt.Bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		args := append(slices.Clone(s.Entrypoint), s.Command...)
		if len(args) == 0 {
			return nil, fmt.Errorf("compose %s: no entrypoint or command", name)
		}
		for i, a := range args {
			args[i] = mapPath(s, a, opt.Dir)
		}
		bin, err := exec.LookPath(args[0])
		if err != nil {
			return nil, fmt.Errorf("compose %s: %w", name, err)
		}
		inits = append(inits, newProc(name, name, bin, args[1:], env, nil))
	}

	// The stand-ins.
	alexEnv, err := envFor(r.alex, map[string]string{"ALEXSIM_ADDR": infra[r.alex]})
	if err != nil {
		return nil, err
	}
	t.ALEXURL = "http://" + infra[r.alex]
	t.ALEX = newProc("alexsim", r.alex, bins[r.alex], nil, alexEnv, func(ctx context.Context) error { return httpOK(ctx, t.ALEXURL+"/healthz") })
	authEnv, err := envFor(r.auth, map[string]string{"DEVISSUER_ADDR": infra[r.auth]})
	if err != nil {
		return nil, err
	}
	t.AuthURL = "http://" + infra[r.auth]
	t.Auth = newProc("devissuer", r.auth, bins[r.auth], nil, authEnv, func(ctx context.Context) error { return httpOK(ctx, t.AuthURL+"/healthz") })

	// The services.
	for _, name := range services {
		for i, in := range inst[name] {
			env, err := envFor(name, in.listen)
			if err != nil {
				return nil, err
			}
			pr := newProc(fmt.Sprintf("%s-%d", name, i+1), name, bins[name], nil, env, nil)
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

	// Start: the outside parts, the bucket (compose's s3-init), then the
	// services, each waited for.
	startAll := func(ps []*Proc) error {
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
	say("starting redis, a three-node NATS cluster, versitygw, the ALEX simulator and the token issuer")
	if err := startAll(append([]*Proc{t.Redis, t.S3, t.ALEX, t.Auth}, t.NATS...)); err != nil {
		return nil, err
	}
	for _, in := range inits {
		say("running %s", in.Name)
		if err := in.Start(); err != nil {
			return nil, err
		}
		select {
		case <-in.Exited():
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if c := in.ExitCode(); c != 0 {
			return nil, fmt.Errorf("%s exited %d (see %s)", in.Name, c, in.LogPath())
		}
	}
	var svc []*Proc
	for _, name := range services {
		svc = append(svc, t.Services[name]...)
	}
	say("starting %d service processes", len(svc))
	if err := startAll(svc); err != nil {
		return nil, err
	}
	t.StartTime = time.Since(began)
	say("ready in %s (builds %s)", t.StartTime.Round(time.Millisecond), t.BuildTime.Round(time.Millisecond))
	return t, nil
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
