package stack

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose reads the compose file as `docker compose --profile sim`
// reads it, with env as the operator's variables (deploy/.env).
func loadCompose(ctx context.Context, file string, env []string) (*types.Project, error) {
	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithName("clinimg"),
		cli.WithEnv(env),
		cli.WithProfiles([]string{"sim"}),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, fmt.Errorf("compose options: %w", err)
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", file, err)
	}
	return p, nil
}

// roles names the compose services that play each outside part, found the
// way the services find them: by the host in the URLs compose gives them.
type roles struct {
	redis, nats, s3, alex, auth string
}

func findRoles(p *types.Project) (roles, error) {
	hostOf := func(service, key string) (string, error) {
		s, ok := p.Services[service]
		if !ok {
			return "", fmt.Errorf("compose has no %s service", service)
		}
		v := s.Environment[key]
		if v == nil {
			return "", fmt.Errorf("compose: %s sets no %s", service, key)
		}
		u, err := url.Parse(*v)
		if err != nil || u.Hostname() == "" {
			return "", fmt.Errorf("compose: %s %s=%q is not a URL", service, key, *v)
		}
		if _, ok := p.Services[u.Hostname()]; !ok {
			return "", fmt.Errorf("compose: %s %s names %q, which is not a compose service", service, key, u.Hostname())
		}
		return u.Hostname(), nil
	}
	var r roles
	var err error
	for _, f := range []struct {
		dst          *string
		service, key string
	}{
		{&r.redis, "committer", "REDIS_URL"},
		{&r.nats, "committer", "NATS_URL"},
		{&r.s3, "committer", "S3_ENDPOINT"},
		{&r.alex, "committer", "ALEX_API_URL"},
		{&r.auth, "api", "AUTH_JWKS_URL"},
	} {
		if *f.dst, err = hostOf(f.service, f.key); err != nil {
			return r, err
		}
	}
	return r, nil
}

// hostPort finds host:port pairs in a variable's value.
var hostPort = regexp.MustCompile(`([A-Za-z0-9_.-]+):([0-9]{2,5})`)

// addresses is where each compose address is on this machine: a container
// name and its port (redis:6379), and a port published on the host
// (localhost:8080), each become a loopback address of the process playing
// it.
type addresses struct {
	internal  map[string]string // "service:port" -> 127.0.0.1:P
	published map[string]string // "port" -> 127.0.0.1:P
	hosts     []string          // names a browser uses for the host besides *.localhost (127.0.0.1, S3_PUBLIC_HOST)
	natsURLs  string            // every node of the cluster, for NATS_URL
	natsHost  string
}

// rewrite maps every compose address in a service's variable to this
// machine's. NATS_URL names the whole cluster, as a DNS name for it would.
func (a addresses) rewrite(key, v string) (string, error) {
	var missing []string
	out := hostPort.ReplaceAllStringFunc(v, func(m string) string {
		sub := hostPort.FindStringSubmatch(m)
		host, port := sub[1], sub[2]
		if host == a.natsHost && key == "NATS_URL" {
			return strings.TrimPrefix(a.natsURLs, "nats://")
		}
		if addr, ok := a.internal[host+":"+port]; ok {
			return addr
		}
		// *.localhost is the host itself (RFC 6761), as are the names given.
		if host == "localhost" || strings.HasSuffix(host, ".localhost") || slices.Contains(a.hosts, host) {
			if addr, ok := a.published[port]; ok {
				return addr
			}
		}
		if _, ok := a.internalHost(host); ok {
			missing = append(missing, m)
		}
		return m
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("%s=%q: no process serves %v", key, v, missing)
	}
	return out, nil
}

func (a addresses) internalHost(host string) (string, bool) {
	for k, v := range a.internal {
		if h, _, _ := strings.Cut(k, ":"); h == host {
			return v, true
		}
	}
	return "", false
}

// natsList is nats://a,nats://b,... for the nodes' client addresses.
func natsList(addrs []string) string {
	var urls []string
	for _, a := range addrs {
		urls = append(urls, "nats://"+a)
	}
	return strings.Join(urls, ",")
}

// targetPort is the port a listen address (":8080") names.
func targetPort(v string) (int, bool) {
	if !strings.HasPrefix(v, ":") {
		return 0, false
	}
	n, err := strconv.Atoi(v[1:])
	return n, err == nil
}

// publishes lists the host ports s publishes as their own number.
func publishes(s types.ServiceConfig) []string {
	var out []string
	for _, p := range s.Ports {
		if p.Published == strconv.Itoa(int(p.Target)) {
			out = append(out, p.Published)
		}
	}
	return out
}
