package committer_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
)

// A gateway in front of ALEX gives up on a write (504) while ALEX is still
// storing it, and the write lands a second later. A lookup made before
// then says the photo is absent, which is not yet the truth: the photo
// must not be sent again until a write begun then can no longer be under
// way (ALEX_REQUEST_TIMEOUT after it was sent), and must end in the record
// once, as the Media the first write made.
func TestLateWriteNotSentTwice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, alexsim.Options{})
	userID, sess := e.seed(specs(1))
	target := sess.Images[0].MediaIdentifier

	// ALEX holds the first write of the photo for a second before storing
	// it, or until a second write of it arrives.
	var mu sync.Mutex
	posts := 0
	release := make(chan struct{})
	var once sync.Once
	landed := make(chan struct{})
	e.sim.SetHooks(alexsim.Hooks{
		MediaReceived: func(ident string) error {
			if ident != target {
				return nil
			}
			mu.Lock()
			posts++
			n := posts
			mu.Unlock()
			if n > 1 {
				once.Do(func() { close(release) })
				return nil
			}
			select {
			case <-release:
			case <-time.After(time.Second):
			}
			return nil
		},
		MediaStored: func(ident, _ string) error {
			if ident == target {
				select {
				case <-landed:
				default:
					close(landed)
				}
			}
			return nil
		},
	})

	// The gateway: the first POST /Media gets 504 after 200 ms while the
	// request goes on to ALEX; everything else passes through.
	up, _ := url.Parse(e.simURL)
	proxy := httputil.NewSingleHostReverseProxy(up)
	var first sync.Once
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mine := false
		if r.Method == http.MethodPost && r.URL.Path == alexsim.BasePath+"/Media" {
			first.Do(func() { mine = true })
		}
		if !mine {
			proxy.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequestWithContext(context.WithoutCancel(r.Context()), r.Method, e.simURL+r.URL.RequestURI(), bytes.NewReader(body))
		req.Header = r.Header.Clone()
		done := make(chan struct{})
		go func() {
			defer close(done)
			if res, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		}()
		select {
		case <-done:
			t.Error("the held write was answered before the gateway gave up")
		case <-time.After(200 * time.Millisecond):
		}
		http.Error(w, "gateway timeout", http.StatusGatewayTimeout)
	}))
	t.Cleanup(gw.Close)
	over := map[string]string{"ALEX_REQUEST_TIMEOUT": "5s"}
	for k, v := range e.sim.Env(gw.URL) {
		over[k] = v
	}
	e.startCommitter(over)

	got := e.outcome(userID, e.commit(userID, sess), 60*time.Second)
	select {
	case <-landed:
	case <-time.After(30 * time.Second):
		t.Fatal("the held write never landed")
	}
	system := e.config(over).IdentifierSystem
	testenv.Eventually(t, 10*time.Second, "ALEX to store every write it was sent", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(e.sim.ByIdentifier(system, target)) >= posts
	})
	e.checkExactlyOnce(t, got)
}
