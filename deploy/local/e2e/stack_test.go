package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/deploy/local"
	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
)

// env is the running system as the tests see it. Browsers reach the
// relay's SSE through SSE, a proxy the tests can cut.
type env struct {
	*local.Stack
	SSE     *cutProxy
	log     *os.File
	nats    *testenv.NATS
	natsDir string
}

// MediaFor lists the live Media in the ALEX simulator for these photos, by
// the Media identifier the server gave each (session mediaIdentifier):
// neither deleted nor withdrawn (entered-in-error).
func (e *env) MediaFor(identifiers ...string) []alexsim.Stored {
	want := map[string]bool{}
	for _, id := range identifiers {
		want[id] = true
	}
	var out []alexsim.Stored
	for _, m := range e.ALEX.Media() {
		if want[m.Identifier.Value] && !m.Deleted && m.Status != "entered-in-error" {
			out = append(out, m)
		}
	}
	return out
}

// shared is the one stack most tests use; each test has its own user,
// patient and encounter, so they do not see each other.
var shared struct {
	once sync.Once
	env  *env
	err  error
}

// stack returns the shared stack, started on first use.
func stack(t *testing.T) *env {
	t.Helper()
	shared.once.Do(func() {
		// Realtime tokens live 10 s instead of an hour, so every test also
		// runs across token renewals (the pages renew at 3/4 of the life).
		shared.env, shared.err = startStack("stack", map[string]string{"REALTIME_TOKEN_TTL": realtimeTTL.String()})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.env
}

// realtimeTTL is the shared stack's realtime token lifetime.
const realtimeTTL = 10 * time.Second

// startStack starts the whole system as deploy/local runs it; its logs go
// to <name>.log in the artifacts directory.
func startStack(name string, settings map[string]string) (*env, error) {
	dir := artifactsDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	proxy, err := startCutProxy()
	if err != nil {
		f.Close()
		return nil, err
	}
	// No PUBLIC_URL unless a test sets one: the QR code opens the phone
	// page at the address the desktop used, as `make run` does.
	port, err := freePort()
	if err != nil {
		f.Close()
		proxy.Close()
		return nil, err
	}
	envs := map[string]string{
		"REALTIME_SSE_URL": "http://" + proxy.Addr() + "/sse",
	}
	for k, v := range settings {
		envs[k] = v
	}
	// A nats-server process of the stack's own: embedded in this race-
	// instrumented test binary, the server's own data race would fail us.
	ndir, err := os.MkdirTemp("", "clinimg-e2e-nats-*")
	if err != nil {
		f.Close()
		proxy.Close()
		return nil, err
	}
	ns, err := testenv.NewNATS(ndir)
	if err != nil {
		f.Close()
		proxy.Close()
		return nil, err
	}
	st, err := local.Start(context.Background(), local.Options{
		APIPort: port,
		NATSURL: ns.URL,
		Logger:  slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Env:     envs,
	})
	if err != nil {
		f.Close()
		proxy.Close()
		ns.Close()
		os.RemoveAll(ndir)
		return nil, fmt.Errorf("start the local stack: %w", err)
	}
	e := &env{Stack: st, SSE: proxy, log: f, nats: ns, natsDir: ndir}
	relay, err := url.Parse(st.RelayURL)
	if err != nil {
		e.close()
		return nil, fmt.Errorf("relay url %q: %w", st.RelayURL, err)
	}
	proxy.SetBackend(relay.Host)
	return e, nil
}

func (e *env) close() error {
	e.SSE.Close()
	err := e.Stack.Close()
	e.nats.Close()
	os.RemoveAll(e.natsDir)
	e.log.Close()
	return err
}

// freePort asks the kernel for a port nobody listens on.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.env != nil {
		if err := shared.env.close(); err != nil {
			fmt.Fprintln(os.Stderr, "stack:", err)
			code = 1
		}
	}
	os.Exit(code)
}
