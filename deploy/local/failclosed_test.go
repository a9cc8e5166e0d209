package local

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/distribution/reference"
)

// TestComposeFailsClosed: without deploy/dev.env, compose.yaml refuses to
// load (so `docker compose up` refuses to start) while any one secret or
// outside address is missing, with or without the sim profile, and names
// the missing variable. Checked with compose-go's own interpolation.
func TestComposeFailsClosed(t *testing.T) {
	dev := devEnv(t)
	if len(dev) < 10 {
		t.Fatalf("deploy/dev.env has %d values; want every secret and outside address", len(dev))
	}
	for _, profile := range [][]string{nil, {"sim"}} {
		if _, err := composeLoad(nil, profile...); err == nil {
			t.Fatalf("profiles %v: compose.yaml loads with no environment at all", profile)
		}
		for i, kv := range dev {
			name, _, _ := strings.Cut(kv, "=")
			without := slices.Delete(slices.Clone(dev), i, i+1)
			_, err := composeLoad(without, profile...)
			if err == nil {
				t.Errorf("profiles %v: compose.yaml loads without %s (it has a default: a published secret or the simulator)", profile, name)
				continue
			}
			if !strings.Contains(err.Error(), name) {
				t.Errorf("profiles %v: without %s the error does not name it: %v", profile, name, err)
			}
		}
	}
	// With the operator's values and no profile it loads, and no stand-in
	// is started.
	p, err := composeLoad(dev)
	if err != nil {
		t.Fatalf("compose.yaml with every value set: %v", err)
	}
	for _, name := range []string{"alexsim", "devissuer"} {
		if _, ok := p.Services[name]; ok {
			t.Errorf("%s runs without the sim profile", name)
		}
	}
}

// TestComposePorts: what only this host should reach is published on
// loopback: S3 (unless S3_PUBLISH_ADDR opens it for phones on the LAN) and
// the stand-ins.
func TestComposePorts(t *testing.T) {
	loopback := map[string]bool{"s3": true, "alexsim": true, "devissuer": true}
	for _, env := range [][]string{nil, {"S3_PUBLISH_ADDR=0.0.0.0"}} {
		p := loadComposeEnv(t, env, "sim")
		for name, s := range p.Services {
			for _, port := range s.Ports {
				want := ""
				if loopback[name] {
					want = "127.0.0.1"
				}
				if name == "s3" && len(env) > 0 {
					want = "0.0.0.0"
				}
				if port.HostIP != want {
					t.Errorf("env %v: %s publishes %s on %q, want %q", env, name, port.Published, port.HostIP, want)
				}
			}
		}
	}
}

// TestSecretsIgnored: the operator's deploy/.env never reaches git or an
// image, and deploy/dev.env (published on purpose) is not in an image
// either.
func TestSecretsIgnored(t *testing.T) {
	root := repoRoot(t)
	cmd := exec.Command("git", "-C", root, "check-ignore", "-q", "deploy/.env")
	if err := cmd.Run(); err != nil {
		t.Errorf("git does not ignore deploy/.env: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	for _, want := range []string{"**/.env", "**/*.env"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore lacks %q", want)
		}
	}
}

// served is every image repository this project pulls, with the registry
// that serves it and how we know. This machine cannot reach a registry, so
// "serves" is as far as it can tell: the name is the publisher's own and the
// registry is where the publisher pushes. An image outside this table fails
// the test until someone checks it and adds it.
var served = map[string]string{
	"docker.io/library/redis":           "Docker Official Image",
	"docker.io/library/nats":            "Docker Official Image (nats-io maintains it)",
	"docker.io/library/busybox":         "Docker Official Image",
	"docker.io/library/golang":          "Docker Official Image",
	"docker.io/library/debian":          "Docker Official Image",
	"docker.io/versity/versitygw":       "versitygw's release workflow pushes each release tag here and to ghcr.io/versity/versitygw",
	"gcr.io/distroless/static-debian12": "Google's distroless images",
	"ghcr.io/versity/versitygw":         "versitygw's release workflow",
}

// withdrawn are repositories known not to serve: pulls answer "pull access
// denied".
var withdrawn = []string{"docker.io/minio/minio", "docker.io/minio/mc"}

// unversioned are base images whose publisher offers no version tag to pin
// (distroless: only nonroot, latest, debug; debian: the codename moves with
// each point release). Pin them by digest in your own build pipeline.
var unversioned = map[string]bool{
	"gcr.io/distroless/static-debian12:nonroot": true,
	"docker.io/library/debian:bookworm-slim":    true,
}

// TestImagesPinned: every image compose pulls and every base image a
// Dockerfile builds on is a valid reference, from a repository in served,
// never withdrawn, and pinned: never latest, and to a full version
// (x.y.z) unless its publisher has none.
func TestImagesPinned(t *testing.T) {
	refs := map[string]string{} // reference -> where
	p := loadCompose(t, "sim")
	for name, s := range p.Services {
		if s.Build == nil {
			refs[s.Image] = "compose service " + name
		}
	}
	root := repoRoot(t)
	n := 0
	for _, s := range p.Services {
		if s.Build == nil {
			continue
		}
		n++
		df := parseDockerfile(t, filepath.Join(s.Build.Context, s.Build.Dockerfile))
		for _, st := range df.stages {
			rel, _ := filepath.Rel(root, filepath.Join(s.Build.Context, s.Build.Dockerfile))
			refs[st.from] = rel
		}
	}
	if n == 0 || len(refs) < 6 {
		t.Fatalf("found %d Dockerfiles and %d image references; the test reads nothing", n, len(refs))
	}
	full := regexp.MustCompile(`^v?\d+\.\d+\.\d+([-.][A-Za-z0-9.-]+)?$`)
	var names []string
	for ref := range refs {
		names = append(names, ref)
	}
	sort.Strings(names)
	for _, raw := range names {
		where := refs[raw]
		named, err := reference.ParseNormalizedNamed(raw)
		if err != nil {
			t.Errorf("%s: %q is not an image reference: %v", where, raw, err)
			continue
		}
		repo := named.Name()
		if slices.Contains(withdrawn, repo) {
			t.Errorf("%s: %s is withdrawn from its registry (pull access denied)", where, repo)
			continue
		}
		if served[repo] == "" {
			t.Errorf("%s: %s is not a repository known to be served; check it and add it to served", where, repo)
		}
		tagged, ok := named.(reference.Tagged)
		if _, digested := named.(reference.Digested); digested {
			continue // a digest pins exactly
		}
		switch {
		case !ok || tagged.Tag() == "latest":
			t.Errorf("%s: %s is not pinned (no tag or latest)", where, raw)
		case unversioned[named.String()]:
		case !full.MatchString(tagged.Tag()):
			t.Errorf("%s: %s is pinned to %q, a tag that moves; want a full version x.y.z", where, raw, tagged.Tag())
		}
	}
}

// TestAWSPolicy: the API's IAM policy file (docs/deploy.md) reaches only
// temp/ (objects under it, and a listing only with a temp/ prefix) and the
// audit trail under audit/, which it reads and appends to but never deletes.
func TestAWSPolicy(t *testing.T) {
	var pol struct {
		Statement []struct {
			Effect    string
			Principal any
			Action    []string
			Resource  []string
			Condition map[string]map[string][]string
		}
	}
	readJSON(t, filepath.Join("..", "aws", "app-policy.json"), &pol)
	if len(pol.Statement) == 0 {
		t.Fatal("no statements")
	}
	for _, st := range pol.Statement {
		if st.Effect != "Allow" || st.Principal != nil {
			t.Errorf("statement %+v: want Allow without a Principal (an identity policy)", st)
		}
		for _, a := range st.Action {
			switch a {
			case "s3:GetObject", "s3:PutObject", "s3:DeleteObject":
				// The audit trail is read and appended to, never deleted.
				audit := a != "s3:DeleteObject" && slices.Equal(st.Resource, []string{"arn:aws:s3:::BUCKET/audit/*"})
				if !audit && !slices.Equal(st.Resource, []string{"arn:aws:s3:::BUCKET/temp/*"}) {
					t.Errorf("%s on %v, want only temp/* (or audit/* to read and append)", a, st.Resource)
				}
			case "s3:ListBucket":
				if !slices.Equal(st.Condition["StringLike"]["s3:prefix"], []string{"temp/*"}) {
					t.Errorf("s3:ListBucket without the temp/ prefix condition: %v", st.Condition)
				}
			default:
				t.Errorf("action %s: the API needs only object reads, writes, deletes and a prefixed listing", a)
			}
		}
	}
}

// TestComposeHardening: every image built here runs with a read-only root
// (a tmpfs /tmp), no capabilities, no privilege gained after start, and
// memory and process limits.
func TestComposeHardening(t *testing.T) {
	for name, s := range builtServices(t) {
		if !s.ReadOnly || !slices.Contains(s.Tmpfs, "/tmp") {
			t.Errorf("%s: read_only %v, tmpfs %v; want a read-only root with /tmp on tmpfs", name, s.ReadOnly, s.Tmpfs)
		}
		if !slices.Equal(s.CapDrop, []string{"ALL"}) || len(s.CapAdd) != 0 {
			t.Errorf("%s: cap_drop %v cap_add %v; want every capability dropped", name, s.CapDrop, s.CapAdd)
		}
		if !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: security_opt %v lacks no-new-privileges", name, s.SecurityOpt)
		}
		if name == "alexsim" || name == "devissuer" {
			continue // stand-ins: no limits needed
		}
		if s.Deploy == nil || s.Deploy.Resources.Limits == nil || s.Deploy.Resources.Limits.MemoryBytes == 0 || s.Deploy.Resources.Limits.Pids == 0 {
			t.Errorf("%s: no memory and process limits", name)
		}
	}
}
