package stack

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/compose-spec/compose-go/v2/types"
)

// VersityGW is the S3 server the stack runs: versitygw's POSIX gateway,
// built from the module proxy at this version. It checks SigV4 on every
// request and presigned URL.
const (
	VersityGW        = "github.com/versity/versitygw/cmd/versitygw@" + versitygwVersion
	versitygwModule  = "github.com/versity/versitygw@" + versitygwVersion
	versitygwVersion = "v1.8.0"
)

// dockerBuild is the build step of a service's Dockerfile:
//
//	cd services/api && go build -ldflags="-s -w" -o /out/api ./cmd/api
var dockerBuild = regexp.MustCompile(`cd (\S+) && go build .*-o /out/(\S+) (\S+)`)

// buildStep is the module directory and main package a Dockerfile builds.
type buildStep struct {
	module, name, pkg string
}

func readBuildStep(s types.ServiceConfig) (buildStep, error) {
	df := s.Build.Dockerfile
	if !filepath.IsAbs(df) {
		df = filepath.Join(s.Build.Context, df)
	}
	raw, err := os.ReadFile(df)
	if err != nil {
		return buildStep{}, err
	}
	m := dockerBuild.FindStringSubmatch(string(raw))
	if m == nil {
		return buildStep{}, fmt.Errorf("%s: no `cd <module> && go build -o /out/<name> <package>` step", df)
	}
	return buildStep{module: filepath.Join(s.Build.Context, m[1]), name: m[2], pkg: m[3]}, nil
}

// builder compiles each binary once into dir, as the Dockerfiles do:
// each module on its own (GOWORK=off).
type builder struct {
	dir string
	mu  sync.Mutex
	out map[string]*built
}

type built struct {
	once sync.Once
	path string
	err  error
}

func (b *builder) do(key string, f func(path string) error) (string, error) {
	b.mu.Lock()
	if b.out == nil {
		b.out = map[string]*built{}
	}
	r, ok := b.out[key]
	if !ok {
		r = &built{path: filepath.Join(b.dir, key)}
		b.out[key] = r
	}
	b.mu.Unlock()
	r.once.Do(func() { r.err = f(r.path) })
	return r.path, r.err
}

func goCmd(dir string, env []string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	// No flags of its own: the build cache is shared with `make build`.
	cmd.Env = append(os.Environ(), append([]string{"GOWORK=off"}, env...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return nil
}

// service builds what a compose service's Dockerfile builds.
func (b *builder) service(step buildStep) (string, error) {
	return b.do(step.name, func(path string) error {
		return goCmd(step.module, nil, "build", "-o", path, step.pkg)
	})
}

// natsServer builds the nats-server the module at dir requires.
func (b *builder) natsServer(dir string) (string, error) {
	return b.do("nats-server", func(path string) error {
		return goCmd(dir, nil, "build", "-o", path, "github.com/nats-io/nats-server/v2")
	})
}

// versitygwEntrypoint is the versitygw image's entrypoint script, from the
// same module: it turns the VGW_* variables compose sets into the
// gateway's command line.
func versitygwEntrypoint() (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", versitygwModule)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download versitygw: %w", err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		return "", fmt.Errorf("go mod download versitygw: %q: %v", out, err)
	}
	return filepath.Join(m.Dir, "docker-entrypoint.sh"), nil
}

// versitygw installs the S3 gateway from the module proxy.
func (b *builder) versitygw() (string, error) {
	return b.do("versitygw", func(path string) error {
		return goCmd(os.TempDir(), []string{"GOBIN=" + filepath.Dir(path)}, "install", VersityGW)
	})
}
