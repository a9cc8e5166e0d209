// Package web holds the two pages a GP uses, embedded in the API binary: the
// desktop widget (GET /) and the phone capture page (GET /mobile), with their
// scripts and styles under /static/. They are plain HTML, CSS and JavaScript
// modules: no build step, nothing fetched from a CDN.
//
// Mounting, with any router:
//
//	h := web.Handler()
//	mux.Handle("GET /", h)        // desktop widget; other paths answer 404
//	mux.Handle("GET /mobile", h)  // phone page
//	mux.Handle("GET /static/", h) // assets
//
// or with Gin: r.GET("/", gin.WrapH(h)); r.GET("/mobile", gin.WrapH(h));
// r.GET("/static/*path", gin.WrapH(h)).
//
// The pages talk only to the HTTP API (described at /openapi.json), on the
// same origin, plus the presigned S3 URLs and the realtime SSE URL the API
// hands out.
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed assets
var assets embed.FS

// FS returns the embedded files: index.html (desktop), mobile.html (phone)
// and static/... (scripts, styles, icons).
func FS() fs.FS {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	return sub
}

// Handler serves "/" (desktop widget), "/mobile" (phone page) and
// "/static/..." (assets). Any other path answers 404. Only GET and HEAD are
// accepted.
//
// Every answer carries headers that keep tokens where they are: the phone
// URL holds its QR token in the query string, so no page sends a Referer;
// pages are not cached, and scripts run only from this origin. Pages carry
// csp as their Content-Security-Policy (CSP builds one; "" is CSP(Policy{})).
func Handler(csp string) http.Handler {
	if csp == "" {
		csp = CSP(Policy{})
	}
	files := FS()
	static := http.FileServer(http.FS(files))
	page := func(name string) http.Handler {
		body, err := fs.ReadFile(files, name)
		if err != nil {
			panic(err)
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Content-Security-Policy", csp)
			_, _ = w.Write(body)
		})
	}
	index, mobile := page("index.html"), page("mobile.html")

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		switch p := r.URL.Path; {
		case p == "/" || p == "/index.html":
			index.ServeHTTP(w, r)
		case p == "/mobile" || p == "/mobile/":
			mobile.ServeHTTP(w, r)
		case p == "/static/sw.js":
			// the phone page's service worker controls /mobile, above its own folder
			h.Set("Service-Worker-Allowed", "/mobile")
			static.ServeHTTP(w, r)
		case strings.HasPrefix(p, "/static/") && !strings.HasSuffix(p, "/"):
			static.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}

// Policy is what the pages may reach beyond their own origin.
type Policy struct {
	// Images are origins images load from (the bucket's presigned GETs).
	Images []string
	// Connect are origins the pages connect to (the bucket's presigned
	// PUTs, the realtime SSE endpoint).
	Connect []string
	// FrameAncestors is the CSP frame-ancestors value: who may embed the
	// pages (the practice system showing the widget); default 'none'.
	FrameAncestors string
}

// CSP is the pages' Content-Security-Policy for p: their own scripts and
// styles only, images from this origin, data: and blob: URLs (the QR code,
// local previews) and p.Images, connections to this origin and p.Connect,
// and framing by p.FrameAncestors only.
func CSP(p Policy) string {
	fa := p.FrameAncestors
	if fa == "" {
		fa = "'none'"
	}
	img := strings.Join(append([]string{"'self'", "data:", "blob:"}, p.Images...), " ")
	conn := strings.Join(append([]string{"'self'"}, p.Connect...), " ")
	return "default-src 'self'; script-src 'self'; style-src 'self'; img-src " + img + "; connect-src " + conn +
		"; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors " + fa
}
