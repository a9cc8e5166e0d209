package web

import (
	"io/fs"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHandler(t *testing.T) {
	h := Handler("")
	tests := []struct {
		method, path string
		status       int
		contentType  string
		contains     string
	}{
		{"GET", "/", 200, "text/html; charset=utf-8", `src="/static/desktop.js"`},
		{"GET", "/mobile", 200, "text/html; charset=utf-8", `capture="environment"`},
		{"GET", "/mobile?token=abc", 200, "text/html; charset=utf-8", `src="/static/mobile.js"`},
		{"GET", "/static/live.js", 200, "text/javascript; charset=utf-8", "new EventSource("},
		{"GET", "/static/style.css", 200, "text/css; charset=utf-8", ".commitbar"},
		{"GET", "/static/sw.js", 200, "text/javascript; charset=utf-8", "caches.match"},
		{"HEAD", "/", 200, "text/html; charset=utf-8", ""},
		{"GET", "/static/", 404, "text/plain; charset=utf-8", ""},
		{"GET", "/static/nope.js", 404, "text/plain; charset=utf-8", ""},
		{"GET", "/index.htm", 404, "text/plain; charset=utf-8", ""},
		{"GET", "/static/../web.go", 404, "text/plain; charset=utf-8", ""},
		{"POST", "/", 405, "text/plain; charset=utf-8", ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			got := [2]any{rec.Code, rec.Header().Get("Content-Type")}
			if diff := cmp.Diff([2]any{tt.status, tt.contentType}, got); diff != "" {
				t.Errorf("status, content type (-want +got):\n%s", diff)
			}
			if !strings.Contains(rec.Body.String(), tt.contains) {
				t.Errorf("body does not contain %q", tt.contains)
			}
			if got := rec.Header().Get("Service-Worker-Allowed"); (tt.path == "/static/sw.js") != (got == "/mobile") {
				t.Errorf("Service-Worker-Allowed = %q", got)
			}
			if got := rec.Header().Get("Referrer-Policy"); tt.status != 405 && got != "no-referrer" {
				t.Errorf("Referrer-Policy = %q, want no-referrer (the phone URL holds a token)", got)
			}
		})
	}
}

func TestPagesSetCSPAndNoExternalResources(t *testing.T) {
	for _, path := range []string{"/", "/mobile"} {
		rec := httptest.NewRecorder()
		Handler("").ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("%s: Content-Security-Policy = %q, want script-src 'self'", path, csp)
		}
	}
	// Nothing may come from a CDN: the machines and clinics may have no internet.
	err := fs.WalkDir(FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(FS(), p)
		if err != nil {
			return err
		}
		for _, bad := range []string{"https://", "http://", "console.log("} {
			if strings.Contains(string(b), bad) {
				t.Errorf("%s contains %q", p, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The phone page's service worker keeps every script the page loads, so a
// reload without a connection finds them all: every module mobile.js
// imports, directly or not, is in its list.
func TestServiceWorkerKeepsThePhonePage(t *testing.T) {
	sw, err := fs.ReadFile(FS(), "static/sw.js")
	if err != nil {
		t.Fatal(err)
	}
	imports := regexp.MustCompile(`from '\./([a-z-]+\.js)'`)
	need := []string{"/mobile", "/static/style.css", "/static/mobile.js"}
	seen := map[string]bool{}
	queue := []string{"mobile.js"}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		src, err := fs.ReadFile(FS(), "static/"+name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range imports.FindAllStringSubmatch(string(src), -1) {
			if !seen[m[1]] {
				seen[m[1]] = true
				queue = append(queue, m[1])
				need = append(need, "/static/"+m[1])
			}
		}
	}
	if len(seen) < 5 {
		t.Fatalf("found only %d modules behind mobile.js: %v", len(seen), seen)
	}
	for _, p := range need {
		if !strings.Contains(string(sw), "'"+p+"'") {
			t.Errorf("sw.js does not keep %s, which the phone page loads", p)
		}
	}
}
