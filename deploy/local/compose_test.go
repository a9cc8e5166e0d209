package local

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/services/api"
	"github.com/clinicalimages/clinimg/services/committer"
	"github.com/clinicalimages/clinimg/services/relay"
	"github.com/clinicalimages/clinimg/services/thumbnailer"
)

// Docker does not run on the build machine, so deploy/compose.yaml is
// checked the way `docker compose` reads it (compose-go, the loader Docker
// Compose itself uses) and against the services' own configuration code.

const composeFile = "../compose.yaml"

// repoRoot is the repository root (deploy/local/../..).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// devEnvFile holds the published development values, the ones
// `docker compose --env-file deploy/dev.env` gives.
const devEnvFile = "../dev.env"

// loadCompose loads compose.yaml the development way (deploy/dev.env, no
// environment of the caller's, so every default is what is tested) with the
// given profiles.
func loadCompose(t *testing.T, profiles ...string) *types.Project {
	t.Helper()
	return loadComposeEnv(t, nil, profiles...)
}

// loadComposeEnv loads compose.yaml as deploy/dev.env and an operator's
// environment of env ("NAME=value", which wins) would have it.
func loadComposeEnv(t *testing.T, env []string, profiles ...string) *types.Project {
	t.Helper()
	p, err := composeLoad(append(devEnv(t), env...), profiles...)
	if err != nil {
		t.Fatalf("load %s: %v", composeFile, err)
	}
	return p
}

// composeLoad loads compose.yaml with exactly env, interpolating as Docker
// Compose does (a ${VAR:?} without VAR is an error).
func composeLoad(env []string, profiles ...string) (*types.Project, error) {
	opts, err := cli.NewProjectOptions([]string{composeFile},
		cli.WithName("clinimg"),
		cli.WithEnv(env),
		cli.WithProfiles(profiles),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

// devEnv is deploy/dev.env as NAME=value lines.
func devEnv(t *testing.T) []string {
	t.Helper()
	m, err := dotenv.GetEnvFromFile(nil, []string{devEnvFile})
	if err != nil {
		t.Fatalf("%s: %v", devEnvFile, err)
	}
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// service is the part of a compose service this test pins down.
type service struct {
	Dockerfile string            // relative to the repository root; "" for a pulled image
	Image      string            // the image's repository (tag checked apart)
	Profiles   []string          // nil: always started
	Restart    string            // restart policy
	Health     string            // the health check's command, joined
	DependsOn  map[string]string // service -> condition, "?" suffix when not required
	Replicas   int
	Published  []string // host ports published
}

func summarize(t *testing.T, root string, s types.ServiceConfig) service {
	t.Helper()
	out := service{Profiles: s.Profiles, Restart: s.Restart, Replicas: 1}
	if s.Build != nil {
		df := s.Build.Dockerfile
		if !filepath.IsAbs(df) {
			df = filepath.Join(s.Build.Context, df)
		}
		rel, err := filepath.Rel(root, df)
		if err != nil {
			t.Fatal(err)
		}
		out.Dockerfile = filepath.ToSlash(rel)
		if s.Build.Context != root {
			t.Errorf("%s: build context %s, want the repository root %s (the modules' replace ../../pkg needs it)", s.Name, s.Build.Context, root)
		}
	}
	out.Image, _, _ = strings.Cut(s.Image, ":")
	if s.HealthCheck != nil {
		out.Health = strings.Join(s.HealthCheck.Test, " ")
	}
	for name, d := range s.DependsOn {
		if out.DependsOn == nil {
			out.DependsOn = map[string]string{}
		}
		c := d.Condition
		if !d.Required {
			c += "?"
		}
		out.DependsOn[name] = c
	}
	if s.Deploy != nil && s.Deploy.Replicas != nil {
		out.Replicas = *s.Deploy.Replicas
	}
	for _, p := range s.Ports {
		out.Published = append(out.Published, p.Published)
	}
	sort.Strings(out.Published)
	return out
}

func wget(port int, path string) string {
	return fmt.Sprintf("CMD /usr/local/bin/busybox wget -q -O /dev/null http://127.0.0.1:%d%s", port, path)
}

func TestComposeServices(t *testing.T) {
	root := repoRoot(t)
	infra := map[string]string{"redis": "service_healthy", "nats": "service_healthy", "s3-init": "service_completed_successfully"}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{}
		for a, b := range m {
			out[a] = b
		}
		out[k] = v
		return out
	}
	want := map[string]service{
		"redis": {Image: "redis", Restart: "unless-stopped", Health: "CMD redis-cli ping", Replicas: 1},
		"nats": {Image: "nats", Restart: "unless-stopped", Replicas: 1,
			Health: "CMD wget -q -O /dev/null http://127.0.0.1:8222/healthz?js-enabled-only=true"},
		"s3": {Image: "versity/versitygw", Restart: "unless-stopped", Health: "CMD wget -q -O /dev/null http://127.0.0.1:9000/health", Replicas: 1,
			Published: []string{"9000"}},
		"s3-init": {Image: "versity/versitygw", Restart: "no", Replicas: 1,
			DependsOn: map[string]string{"s3": "service_healthy"}},
		"s3-expire": {Image: "busybox", Restart: "unless-stopped", Replicas: 1,
			DependsOn: map[string]string{"s3-init": "service_completed_successfully"}},
		"api": {Dockerfile: "services/api/Dockerfile", Image: "clinimg/api", Restart: "unless-stopped",
			Health: wget(9091, "/readyz"), DependsOn: with(infra, "devissuer", "service_healthy?"), Replicas: 1,
			Published: []string{"8080"}},
		"relay": {Dockerfile: "services/relay/Dockerfile", Image: "clinimg/relay", Restart: "unless-stopped",
			Health: wget(9092, "/readyz"), DependsOn: map[string]string{"nats": "service_healthy"}, Replicas: 1,
			Published: []string{"8081"}},
		"committer": {Dockerfile: "services/committer/Dockerfile", Image: "clinimg/committer", Restart: "unless-stopped",
			Health: wget(9093, "/readyz"), DependsOn: with(infra, "alexsim", "service_healthy?"), Replicas: 2},
		"thumbnailer": {Dockerfile: "services/thumbnailer/Dockerfile", Image: "clinimg/thumbnailer", Restart: "unless-stopped",
			Health: wget(9094, "/readyz"), DependsOn: infra, Replicas: 1},
		"alexsim": {Dockerfile: "deploy/alexsim/Dockerfile", Image: "clinimg/alexsim", Profiles: []string{"sim"},
			Restart: "unless-stopped", Health: wget(8090, "/healthz"), Replicas: 1, Published: []string{"8090"}},
		"devissuer": {Dockerfile: "deploy/devissuer/Dockerfile", Image: "clinimg/devissuer", Profiles: []string{"sim"},
			Restart: "unless-stopped", Health: wget(8070, "/healthz"), Replicas: 1, Published: []string{"8070"}},
	}

	p := loadCompose(t, "sim")
	got := map[string]service{}
	for name, s := range p.Services {
		got[name] = summarize(t, root, s)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("compose services (-want +got):\n%s", diff)
	}

	// Without the profile the stand-ins are off and nothing requires them.
	plain := loadCompose(t)
	var names []string
	for name := range plain.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	if diff := cmp.Diff([]string{"api", "committer", "nats", "redis", "relay", "s3", "s3-expire", "s3-init", "thumbnailer"}, names); diff != "" {
		t.Errorf("services without a profile (-want +got):\n%s", diff)
	}
}

// env is a service's environment as a getenv function.
func env(s types.ServiceConfig) func(string) string {
	return func(k string) string {
		if v := s.Environment[k]; v != nil {
			return *v
		}
		return ""
	}
}

func port(t *testing.T, addr string) int {
	t.Helper()
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		addr = u.Host
		if u.Port() == "" {
			addr += ":80"
		}
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return n
}

func host(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() == "" {
		t.Fatalf("%q is not a URL with a host", raw)
	}
	return u.Hostname()
}

// healthPort is the port a service's health check calls.
func healthPort(t *testing.T, s types.ServiceConfig) int {
	t.Helper()
	if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 {
		t.Fatalf("%s has no health check", s.Name)
	}
	return port(t, s.HealthCheck.Test[len(s.HealthCheck.Test)-1])
}

func publishes(s types.ServiceConfig, target int) bool {
	for _, p := range s.Ports {
		if int(p.Target) == target && p.Published == strconv.Itoa(target) {
			return true
		}
	}
	return false
}

// TestComposeEnvironment hands each service's compose environment to its
// own ConfigFromEnv, then checks that the services agree with each other and
// with the parts they are wired to.
func TestComposeEnvironment(t *testing.T) {
	p := loadCompose(t, "sim")
	svc := func(name string) types.ServiceConfig {
		s, ok := p.Services[name]
		if !ok {
			t.Fatalf("no service %q", name)
		}
		return s
	}
	acfg, err := api.ConfigFromEnv(env(svc("api")))
	if err != nil {
		t.Fatalf("api config from compose: %v", err)
	}
	rcfg, err := relay.ConfigFromEnv(env(svc("relay")))
	if err != nil {
		t.Fatalf("relay config from compose: %v", err)
	}
	ccfg, err := committer.ConfigFromEnv(env(svc("committer")))
	if err != nil {
		t.Fatalf("committer config from compose: %v", err)
	}
	tcfg, err := thumbnailer.ConfigFromEnv(env(svc("thumbnailer")))
	if err != nil {
		t.Fatalf("thumbnailer config from compose: %v", err)
	}
	commons := map[string]config.Common{"api": acfg.Common, "relay": rcfg.Common, "committer": ccfg.Common, "thumbnailer": tcfg.Common}

	s3init := env(svc("s3-init"))
	for name, c := range commons {
		s := svc(name)
		if got, want := port(t, c.OpsAddr), healthPort(t, s); got != want {
			t.Errorf("%s: ops server on port %d, health check calls %d", name, got, want)
		}
		if h := host(t, c.RedisURL); p.Services[h].Name == "" {
			t.Errorf("%s: REDIS_URL host %q is not a compose service", name, h)
		}
		if h := host(t, c.NATSURL); h != "nats" {
			t.Errorf("%s: NATS_URL host %q, want nats", name, h)
		}
		if name == "relay" {
			continue // the relay does not touch S3
		}
		if c.S3.Bucket != s3init("S3_BUCKET_NAME") {
			t.Errorf("%s: bucket %q, s3-init makes %q", name, c.S3.Bucket, s3init("S3_BUCKET_NAME"))
		}
		if c.S3.AccessKey != s3init("S3_APP_ACCESS_KEY") || c.S3.SecretKey != s3init("S3_APP_SECRET_KEY") {
			t.Errorf("%s: S3 credentials are not the least-privilege user s3-init creates", name)
		}
		if c.S3.AccessKey == env(svc("s3"))("ROOT_ACCESS_KEY_ID") {
			t.Errorf("%s: uses the S3 server's root user", name)
		}
		if !c.S3.PathStyle || port(t, c.S3.Endpoint) != port(t, env(svc("s3"))("VGW_PORT")) {
			t.Errorf("%s: S3 endpoint %q path style %v, want the s3 service's port, path style", name, c.S3.Endpoint, c.S3.PathStyle)
		}
	}
	for _, name := range []string{"committer", "thumbnailer"} {
		if h := host(t, commons[name].S3.Endpoint); h != "s3" {
			t.Errorf("%s: S3 endpoint host %q, want s3", name, h)
		}
	}

	// The API presigns for a name browsers and the API container both reach.
	s3Host := host(t, acfg.Common.S3.Endpoint)
	if !slices.Contains(svc("api").ExtraHosts[s3Host], "host-gateway") || !publishes(svc("s3"), 9000) {
		t.Errorf("api presigns for %q: want it mapped to host-gateway in the API container (got %v) and the s3 service publishing 9000",
			s3Host, svc("api").ExtraHosts)
	}

	// Browsers reach the API and the relay's SSE where the API says.
	if !publishes(svc("api"), port(t, acfg.Addr)) || port(t, acfg.PublicURL) != port(t, acfg.Addr) {
		t.Errorf("api listens on %s, PUBLIC_URL %s: want it published on the same port", acfg.Addr, acfg.PublicURL)
	}
	if !publishes(svc("relay"), port(t, rcfg.Addr)) || port(t, acfg.Realtime.URL) != port(t, rcfg.Addr) {
		t.Errorf("relay listens on %s, browsers are sent to %s", rcfg.Addr, acfg.Realtime.URL)
	}
	if acfg.Realtime.Mode != rcfg.Realtime.Mode || acfg.Realtime.Key != rcfg.Realtime.Key {
		t.Errorf("api and relay realtime settings differ: %v %v / %v %v", acfg.Realtime.Mode, acfg.Realtime.Key, rcfg.Realtime.Mode, rcfg.Realtime.Key)
	}
	if !slices.Contains(rcfg.AllowedOrigins, acfg.PublicURL) || env(svc("s3"))("VGW_CORS_ALLOW_ORIGIN") != acfg.PublicURL {
		t.Errorf("the pages' origin %s is not allowed by the relay (%v) or S3 CORS", acfg.PublicURL, rcfg.AllowedOrigins)
	}

	// The sim profile's stand-ins are what the API and committer point at.
	if h := host(t, acfg.JWKSURL); h != "devissuer" || port(t, acfg.JWKSURL) != port(t, env(svc("devissuer"))("DEVISSUER_ADDR")) {
		t.Errorf("AUTH_JWKS_URL %s does not reach the devissuer service", acfg.JWKSURL)
	}
	if acfg.Issuer != env(svc("devissuer"))("AUTH_ISSUER") || acfg.Audience != env(svc("devissuer"))("AUTH_AUDIENCE") {
		t.Errorf("the API expects issuer %q audience %q; devissuer signs others", acfg.Issuer, acfg.Audience)
	}
	sim := env(svc("alexsim"))
	for _, u := range []string{ccfg.ALEX.BaseURL, ccfg.ALEX.TokenURL} {
		if host(t, u) != "alexsim" || port(t, u) != port(t, sim("ALEXSIM_ADDR")) {
			t.Errorf("committer ALEX URL %s does not reach the alexsim service", u)
		}
	}
	gotALEX := []string{ccfg.ALEX.ClientID, ccfg.ALEX.ClientSecret, ccfg.ALEX.Scope, ccfg.ALEX.FacilityID}
	wantALEX := []string{sim("ALEXSIM_CLIENT_ID"), sim("ALEXSIM_CLIENT_SECRET"), sim("ALEXSIM_SCOPE"), sim("ALEXSIM_FACILITY_ID")}
	if diff := cmp.Diff(wantALEX, gotALEX); diff != "" {
		t.Errorf("committer's ALEX credentials differ from the simulator's (-sim +committer):\n%s", diff)
	}
	// The API reads earlier photos with the committer's ALEX settings.
	if acfg.ALEX == nil || acfg.ALEX.BaseURL != ccfg.ALEX.BaseURL || acfg.ALEX.ClientSecret != ccfg.ALEX.ClientSecret || acfg.ALEX.FacilityID != ccfg.ALEX.FacilityID {
		t.Errorf("the API's ALEX settings (earlier photos) are not the committer's (set: %v)", acfg.ALEX != nil)
	}
}

// With an Ably key, browsers are sent to Ably's SSE endpoint (or the one
// named), never to the relay's, which does not serve SSE in that mode; the
// relay publishes where ABLY_ENDPOINT says.
func TestComposeAbly(t *testing.T) {
	tests := []struct {
		name         string
		env          []string
		wantURL      string
		wantEndpoint string
	}{
		{"ably", []string{"ABLY_API_KEY=app.key:secret"}, realtime.AblySSEURL, ""},
		{"ably stand-in", []string{"ABLY_API_KEY=app.key:secret", "ABLY_SSE_URL=http://127.0.0.1:7000/sse", "ABLY_ENDPOINT=http://127.0.0.1:7000"},
			"http://127.0.0.1:7000/sse", "http://127.0.0.1:7000"},
		{"built-in sse", nil, "http://localhost:8081/sse", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadComposeEnv(t, tt.env, "sim")
			acfg, err := api.ConfigFromEnv(env(p.Services["api"]))
			if err != nil {
				t.Fatal(err)
			}
			rcfg, err := relay.ConfigFromEnv(env(p.Services["relay"]))
			if err != nil {
				t.Fatal(err)
			}
			got := []string{acfg.Realtime.URL, rcfg.AblyEndpoint, string(rcfg.Realtime.Mode)}
			want := []string{tt.wantURL, tt.wantEndpoint, string(acfg.Realtime.Mode)}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("[browsers' SSE URL, relay's Ably endpoint, relay's mode] (-want +got):\n%s", d)
			}
		})
	}
}

// TestComposeNATS reads the mounted nats.conf with the server's own parser.
func TestComposeNATS(t *testing.T) {
	p := loadCompose(t)
	n := p.Services["nats"]
	conf := ""
	dataDir := ""
	for _, v := range n.Volumes {
		switch {
		case v.Type == types.VolumeTypeBind && strings.HasSuffix(v.Source, filepath.Join("deploy", "nats", "nats.conf")):
			if !v.ReadOnly {
				t.Errorf("nats.conf is mounted writable")
			}
			conf = v.Target
		case v.Type == types.VolumeTypeVolume:
			dataDir = v.Target
		}
	}
	if cmd := strings.Join(n.Command, " "); conf == "" || cmd != "-c "+conf {
		t.Fatalf("nats command %q, config mounted at %q: want -c <the mounted file>", cmd, conf)
	}
	opts, err := server.ProcessConfigFile(filepath.Join("..", "nats", "nats.conf"))
	if err != nil {
		t.Fatalf("nats.conf: %v", err)
	}
	got := []string{strconv.FormatBool(opts.JetStream), strconv.FormatBool(opts.SyncAlways), opts.StoreDir, strconv.Itoa(opts.HTTPPort), strconv.Itoa(opts.Port)}
	want := []string{"true", "true", dataDir, "8222", "4222"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nats.conf [jetstream, sync always, store dir (the named volume), http port, port] (-want +got):\n%s", diff)
	}
	raw, err := os.ReadFile(filepath.Join("..", "nats", "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), "# sync_interval") || !strings.Contains(string(raw), "35-40x") {
		t.Errorf("nats.conf does not explain its sync_interval choice and its measured cost")
	}
}

// TestComposeS3Init checks the one-shot set-up: the mounted script gets
// every variable it reads, makes the services' user with the least role
// and gives it the bucket the services use; and the expiry service's
// script runs on the volume the S3 server writes.
func TestComposeS3Init(t *testing.T) {
	p := loadCompose(t)
	s := p.Services["s3-init"]
	mount, src := bindMount(t, s)
	if !strings.HasPrefix(strings.Join(s.Entrypoint, " "), "/bin/sh "+mount+"/init.sh") {
		t.Fatalf("s3-init entrypoint %v, mount %q: want the mounted init.sh", s.Entrypoint, mount)
	}
	script, err := os.ReadFile(filepath.Join(src, "init.sh"))
	if err != nil {
		t.Fatal(err)
	}
	checkScriptEnv(t, "init.sh", string(script), s)
	for _, want := range []string{"create-user --access \"$S3_APP_ACCESS_KEY\" --secret \"$S3_APP_SECRET_KEY\" --role user",
		"create-bucket --owner \"$S3_APP_ACCESS_KEY\" --bucket \"$S3_BUCKET_NAME\""} {
		if !strings.Contains(string(script), want) {
			t.Errorf("init.sh does not %s", want)
		}
	}
	ie, se, ce := env(s), env(p.Services["s3"]), env(p.Services["api"])
	if ie("ADMIN_ACCESS_KEY_ID") != se("ROOT_ACCESS_KEY_ID") || ie("ADMIN_SECRET_ACCESS_KEY") != se("ROOT_SECRET_ACCESS_KEY") {
		t.Errorf("s3-init's admin credentials are not the S3 server's root user")
	}
	if host(t, ie("ADMIN_ENDPOINT_URL")) != "s3" || port(t, ie("ADMIN_ENDPOINT_URL")) != port(t, se("VGW_PORT")) {
		t.Errorf("s3-init's ADMIN_ENDPOINT_URL %s does not reach the s3 service", ie("ADMIN_ENDPOINT_URL"))
	}
	if ie("S3_APP_ACCESS_KEY") == se("ROOT_ACCESS_KEY_ID") {
		t.Errorf("the services' S3 user is the root user")
	}
	if ie("S3_BUCKET_NAME") != ce("S3_BUCKET_NAME") {
		t.Errorf("s3-init makes bucket %q, the services use %q", ie("S3_BUCKET_NAME"), ce("S3_BUCKET_NAME"))
	}

	x := p.Services["s3-expire"]
	xmount, _ := bindMount(t, x)
	if strings.Join(x.Command, " ") != "/bin/sh "+xmount+"/expire.sh" {
		t.Errorf("s3-expire command %v: want the mounted expire.sh", x.Command)
	}
	raw, err := os.ReadFile(filepath.Join(src, "expire.sh"))
	if err != nil {
		t.Fatal(err)
	}
	checkScriptEnv(t, "expire.sh", string(raw), x)
	if dataDir := volumeTarget(p.Services["s3"], "s3-data"); dataDir != se("VGW_BACKEND_ARG") || volumeTarget(x, "s3-data") != env(x)("S3_DATA_DIR") {
		t.Errorf("s3 serves %s from volume s3-data at %s; s3-expire sees it at %s, expires under %s",
			se("VGW_BACKEND_ARG"), dataDir, volumeTarget(x, "s3-data"), env(x)("S3_DATA_DIR"))
	}
	if env(x)("S3_BUCKET_NAME") != ce("S3_BUCKET_NAME") {
		t.Errorf("s3-expire expires bucket %q, the services use %q", env(x)("S3_BUCKET_NAME"), ce("S3_BUCKET_NAME"))
	}
	if m, err := strconv.Atoi(env(x)("EXPIRE_AFTER_MINUTES")); err != nil || m < 24*60 {
		t.Errorf("EXPIRE_AFTER_MINUTES %q: want at least a day (a session may wait that long for its commit)", env(x)("EXPIRE_AFTER_MINUTES"))
	}

	var lc struct {
		Rules []struct {
			Status     string
			Filter     struct{ Prefix string }
			Expiration struct{ Days int }
		}
	}
	readJSON(t, filepath.Join("..", "aws", "lifecycle.json"), &lc)
	if len(lc.Rules) != 1 || lc.Rules[0].Status != "Enabled" || lc.Rules[0].Filter.Prefix != "temp/" || lc.Rules[0].Expiration.Days < 1 {
		t.Errorf("aws/lifecycle.json = %+v, want one enabled rule expiring temp/", lc)
	}
}

// TestS3Expire runs expire.sh once on a directory laid out as versitygw's
// posix backend keeps a bucket: what is older than the limit goes, the rest
// and other buckets stay.
func TestS3Expire(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-25 * time.Hour)
	files := map[string]bool{ // path -> expired
		"clinimg-photos/temp/u1/s1/a.jpg":         true,
		"clinimg-photos/temp/u1/s1/a.preview.jpg": true,
		"clinimg-photos/temp/u2/s2/b.jpg":         false,
		"clinimg-photos/keep.txt":                 false,
		"other/temp/c.jpg":                        false,
	}
	for f, expired := range files {
		path := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if expired || strings.HasPrefix(f, "other/") {
			if err := os.Chtimes(path, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd := exec.Command("sh", filepath.Join("..", "s3", "expire.sh"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "S3_BUCKET_NAME=clinimg-photos", "S3_DATA_DIR=" + dir,
		"EXPIRE_AFTER_MINUTES=1440", "EXPIRE_ONCE=1"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("expire.sh: %v\n%s", err, out)
	}
	for f, expired := range files {
		_, err := os.Stat(filepath.Join(dir, f))
		if gone := os.IsNotExist(err); gone != expired {
			t.Errorf("%s: gone %v, want %v", f, gone, expired)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "clinimg-photos/temp/u1")); !os.IsNotExist(err) {
		t.Errorf("the emptied session directory is left behind")
	}
}

func bindMount(t *testing.T, s types.ServiceConfig) (target, source string) {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind {
			if !v.ReadOnly {
				t.Errorf("%s: %s is mounted writable", s.Name, v.Source)
			}
			return v.Target, v.Source
		}
	}
	t.Fatalf("%s mounts no script directory", s.Name)
	return "", ""
}

func volumeTarget(s types.ServiceConfig, volume string) string {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeVolume && v.Source == volume {
			return v.Target
		}
	}
	return ""
}

// checkScriptEnv fails for each variable a script reads that the service
// does not set (EXPIRE_ONCE is the tests' own).
func checkScriptEnv(t *testing.T, name, script string, s types.ServiceConfig) {
	t.Helper()
	for _, v := range regexp.MustCompile(`\$\{?([A-Z_0-9]+)`).FindAllStringSubmatch(script, -1) {
		if n := v[1]; n != "EXPIRE_ONCE" && s.Environment[n] == nil {
			t.Errorf("%s reads %s, which %s's environment does not set", name, n, s.Name)
		}
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestDockerfiles checks every Dockerfile compose builds: it exists, is
// multi-stage, runs as a non-root user, copies only paths that exist, and
// builds the command the service runs.
func TestDockerfiles(t *testing.T) {
	for name, s := range builtServices(t) {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(s.Build.Context, s.Build.Dockerfile)
			df := parseDockerfile(t, path)
			if len(df.stages) < 2 {
				t.Errorf("%d stages, want a build stage and a small runtime stage", len(df.stages))
			}
			final := df.stages[len(df.stages)-1]
			if strings.HasPrefix(final.from, "golang:") {
				t.Errorf("runtime image is %s, the Go toolchain image", final.from)
			}
			if final.user == "" || final.user == "root" || strings.HasPrefix(final.user, "0") {
				t.Errorf("runtime user %q, want a non-root user", final.user)
			}
			for _, src := range df.copies {
				if _, err := os.Stat(filepath.Join(s.Build.Context, src)); err != nil {
					t.Errorf("COPY %s: not in the build context", src)
				}
			}
			if len(final.entrypoint) == 0 {
				t.Fatalf("no ENTRYPOINT")
			}
			bin := filepath.Base(final.entrypoint[0])
			if !strings.Contains(df.text, "-o /out/"+bin+" ") {
				t.Errorf("ENTRYPOINT %s is not the binary the build stage makes", final.entrypoint[0])
			}
			// The health check's wget is in the image.
			if s.HealthCheck != nil && strings.Contains(strings.Join(s.HealthCheck.Test, " "), "busybox") &&
				!strings.Contains(df.text, "COPY --from=tools /bin/busybox /usr/local/bin/busybox") {
				t.Errorf("health check uses busybox, which the image does not have")
			}
			if name == "thumbnailer" && !strings.Contains(final.text, "libvips42") {
				t.Errorf("thumbnailer runtime does not install libvips")
			}
		})
	}
}

// builtServices are the compose services (sim profile) built from this
// repository's Dockerfiles: the four services and the two stand-ins.
func builtServices(t *testing.T) map[string]types.ServiceConfig {
	t.Helper()
	built := map[string]types.ServiceConfig{}
	for name, s := range loadCompose(t, "sim").Services {
		if s.Build != nil {
			built[name] = s
		}
	}
	if len(built) != 6 {
		t.Errorf("%d services built from Dockerfiles, want 6 (four services and two stand-ins)", len(built))
	}
	return built
}

type stage struct {
	from       string
	user       string
	entrypoint []string
	text       string
}

type dockerfile struct {
	stages []stage
	copies []string // sources of COPY from the build context
	text   string
}

// parseDockerfile reads the few instructions the test needs.
func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	df := dockerfile{text: string(raw)}
	sc := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(string(raw), "\\\n", " ")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		word, rest, _ := strings.Cut(line, " ")
		f := strings.Fields(rest)
		switch strings.ToUpper(word) {
		case "FROM":
			df.stages = append(df.stages, stage{from: f[0]})
		case "USER":
			df.stages[len(df.stages)-1].user = f[0]
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &df.stages[len(df.stages)-1].entrypoint); err != nil {
				t.Errorf("ENTRYPOINT %s: want the exec (JSON) form", rest)
			}
		case "COPY":
			if len(f) >= 2 && !strings.HasPrefix(f[0], "--from") {
				df.copies = append(df.copies, f[:len(f)-1]...)
			}
		}
		if len(df.stages) > 0 {
			df.stages[len(df.stages)-1].text += line + "\n"
		}
	}
	return df
}
