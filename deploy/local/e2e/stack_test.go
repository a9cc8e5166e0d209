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

	"github.com/clinicalimages/clinimg/deploy/local"
	"github.com/clinicalimages/clinimg/pkg/alexsim"
)

// env is the running system as the tests see it. Browsers reach the
// relay's SSE through SSE, a proxy the tests can cut.
type env struct {
	*local.Stack
	SSE *cutProxy
}

// MediaFor lists the live Media in the ALEX simulator for these photos (the
// committer puts the image id in each Media's identifier): neither deleted
// nor withdrawn (entered-in-error) by a commit's compensation.
func (e *env) MediaFor(imageIDs ...string) []alexsim.Stored {
	want := map[string]bool{}
	for _, id := range imageIDs {
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

// shared is the one stack all tests use; each test has its own user,
// patient and encounter, so they do not see each other.
var shared struct {
	once    sync.Once
	env     *env
	err     error
	logFile *os.File
}

// stack starts the whole system as deploy/local runs it (once per test
// binary); its logs go to stack.log in the artifacts directory.
func stack(t *testing.T) *env {
	t.Helper()
	shared.once.Do(func() {
		dir := artifactsDir(t)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			shared.err = err
			return
		}
		f, err := os.Create(filepath.Join(dir, "stack.log"))
		if err != nil {
			shared.err = err
			return
		}
		shared.logFile = f
		proxy, err := startCutProxy()
		if err != nil {
			shared.err = err
			return
		}
		// The QR code must open the phone page on this stack: PUBLIC_URL is
		// its address, so the API port is chosen first.
		port, err := freePort()
		if err != nil {
			shared.err = err
			return
		}
		st, err := local.Start(context.Background(), local.Options{
			APIPort: port,
			Logger:  slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo})),
			Env: map[string]string{
				"PUBLIC_URL":       fmt.Sprintf("http://127.0.0.1:%d", port),
				"REALTIME_SSE_URL": "http://" + proxy.Addr() + "/sse",
			},
		})
		if err != nil {
			proxy.Close()
			shared.err = fmt.Errorf("start the local stack: %w", err)
			return
		}
		relay, err := url.Parse(st.RelayURL)
		if err != nil {
			shared.err = fmt.Errorf("relay url %q: %w", st.RelayURL, err)
			return
		}
		proxy.SetBackend(relay.Host)
		shared.env = &env{Stack: st, SSE: proxy}
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.env
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
		shared.env.SSE.Close()
		if err := shared.env.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "stack:", err)
			code = 1
		}
	}
	if shared.logFile != nil {
		shared.logFile.Close()
	}
	os.Exit(code)
}
