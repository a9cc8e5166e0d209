package fhir

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Config says where ALEX is and who we are to it.
type Config struct {
	BaseURL      string // FHIR base, e.g. https://alexapiuat.medtechglobal.com/FHIR
	TokenURL     string // OAuth2 token endpoint (Azure AD)
	ClientID     string
	ClientSecret string
	Scope        string // api://<guid>/.default
	FacilityID   string // mt-facilityid
	AppID        string // mt-appid (optional)
	// Timeout bounds one request, including the photo upload (default 2 min).
	Timeout time.Duration
	// TokenEarly renews a token this long before it expires (default 2 min).
	TokenEarly time.Duration
	// HTTPClient is the transport (default a client with sane dial and
	// header timeouts).
	HTTPClient *http.Client
	// Logger receives one "alex.request" line per request (method, path,
	// status, duration, mt-correlationid). Never tokens or query strings.
	Logger *slog.Logger
	// Observe, if set, sees every request's operation and status (metrics);
	// status 0 is a transport failure.
	Observe func(op string, status int, d time.Duration)
}

// Client talks to ALEX. Safe for concurrent use.
type Client struct {
	cfg  Config
	hc   *http.Client
	base *url.URL
	tok  *tokenCache
	log  *slog.Logger
}

// NewClient builds a client; nothing is contacted until the first call.
func NewClient(cfg Config) (*Client, error) {
	base, err := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
	if err != nil || base.Scheme == "" || base.Host == "" {
		return nil, fmt.Errorf("fhir base url %q: not an absolute URL", cfg.BaseURL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.TokenEarly <= 0 {
		cfg.TokenEarly = 2 * time.Minute
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: cfg.Timeout,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
		}}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cc := &clientcredentials.Config{
		ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, TokenURL: cfg.TokenURL,
		AuthStyle: oauth2.AuthStyleInParams,
	}
	if cfg.Scope != "" {
		cc.Scopes = []string{cfg.Scope}
	}
	c := &Client{cfg: cfg, hc: hc, base: base, log: log}
	c.tok = &tokenCache{early: cfg.TokenEarly, fetch: func(ctx context.Context) (*oauth2.Token, error) {
		ctx = context.WithValue(ctx, oauth2.HTTPClient, hc)
		start := time.Now()
		t, err := cc.Token(ctx)
		status := http.StatusOK
		if err != nil {
			status = 0
			var re *oauth2.RetrieveError
			if errors.As(err, &re) && re.Response != nil {
				status = re.Response.StatusCode
			}
		}
		c.observe("token", status, time.Since(start))
		return t, err
	}}
	return c, nil
}

// TokenReady gets an access token (the cached one while it is fresh): nil
// when ALEX's token endpoint gave one. A readiness check, so a committer
// whose identity provider is unreachable or refuses its credentials says
// so rather than take commits it cannot make.
func (c *Client) TokenReady(ctx context.Context) error {
	if _, err := c.tok.get(ctx); err != nil {
		return fmt.Errorf("alex token: %w", err)
	}
	return nil
}

// Error is a failed ALEX call. Transient errors may succeed if retried.
type Error struct {
	Op            string
	Status        int    // HTTP status; 0 for a transport failure
	Code          string // OperationOutcome issue code, if any
	Message       string // the server's explanation, shortened
	RetryAfter    time.Duration
	CorrelationID string
	Err           error // the transport error, if any
	// NotSent is true when the request never left: no token, or no
	// connection. Whatever it was, it changed nothing on the server.
	NotSent bool
}

func (e *Error) Error() string {
	switch {
	case e.Err != nil:
		return fmt.Sprintf("alex %s: %v", e.Op, e.Err)
	case e.Code != "":
		return fmt.Sprintf("alex %s: %d %s: %s", e.Op, e.Status, e.Code, e.Message)
	default:
		return fmt.Sprintf("alex %s: %d: %s", e.Op, e.Status, e.Message)
	}
}

func (e *Error) Unwrap() error { return e.Err }

var transientCodes = map[string]bool{"transient": true, "throttled": true, "timeout": true, "lock-error": true, "exception": true, "no-store": true, "incomplete": true}

// Transient reports whether retrying may help: transport failures, 5xx,
// 401 (token), 408, 429, and OperationOutcome codes of the transient class.
// Everything else (4xx) is final.
func (e *Error) Transient() bool {
	if e.Status == 0 {
		return true
	}
	switch {
	case e.Status >= 500, e.Status == http.StatusUnauthorized, e.Status == http.StatusRequestTimeout, e.Status == http.StatusTooManyRequests:
		return true
	}
	return transientCodes[e.Code]
}

// Created is the outcome of a create.
type Created struct {
	ID        string
	VersionID string
	// Existing is true when a conditional create found the Media already
	// there (200) rather than creating it (201): Ref then says whose it is.
	Existing bool
	// Ref is the resource as the server returned it, when it did.
	Ref MediaRef
}

// Source opens the photo for one attempt: the reader and its exact length.
type Source func(ctx context.Context) (io.ReadCloser, int64, error)

// CreateMedia posts m with its content read from src. ifNoneExist, if not
// empty, is sent as If-None-Exist (conditional create). A 401 fetches a new
// token and tries once more.
func (c *Client) CreateMedia(ctx context.Context, m Media, src Source, ifNoneExist string) (Created, error) {
	var out Created
	for attempt := 0; ; attempt++ {
		body, size, err := src(ctx)
		if err != nil {
			return Created{}, fmt.Errorf("open photo: %w", err)
		}
		enc, err := Encode(m, body, size)
		if err != nil {
			return Created{}, err
		}
		hdr := http.Header{"Content-Type": {"application/fhir+json"}}
		if ifNoneExist != "" {
			hdr.Set("If-None-Exist", ifNoneExist)
		}
		resp, raw, err := c.do(ctx, "create", http.MethodPost, "Media", hdr, enc.Body, enc.Length)
		enc.Body.Close()
		enc.Wait()
		if retryToken(err, attempt) {
			continue
		}
		if err != nil {
			return Created{}, err
		}
		out.Existing = resp.StatusCode == http.StatusOK
		out.ID, out.VersionID = parseLocation(resp.Header.Get("Location"))
		var r mediaResource
		if json.Unmarshal(raw, &r) == nil && r.ResourceType == "Media" {
			out.Ref = r.ref()
			if out.ID == "" {
				out.ID = r.ID
			}
			if out.VersionID == "" && r.Meta != nil {
				out.VersionID = r.Meta.VersionID
			}
		}
		if out.ID == "" {
			// A 2xx that does not say what was stored: the write may or may
			// not have happened.
			return Created{}, &Error{Op: "create", Status: resp.StatusCode, Message: "no Location or id in the answer"}
		}
		return out, nil
	}
}

// MediaRef is what a search tells of one Media: enough to decide whether
// it is a given photo's.
type MediaRef struct {
	ID         string
	Status     string
	Identifier []Identifier
	Subject    string // "Patient/{id}"
	Hash       string // content.hash: base64 SHA-1 of the photo
}

// mediaResource is the part of a Media read back from the server.
type mediaResource struct {
	ResourceType string       `json:"resourceType"`
	ID           string       `json:"id"`
	Meta         *Meta        `json:"meta"`
	Status       string       `json:"status"`
	Identifier   []Identifier `json:"identifier"`
	Subject      *Reference   `json:"subject"`
	Content      *struct {
		Hash string `json:"hash"`
	} `json:"content"`
}

func (r mediaResource) ref() MediaRef {
	m := MediaRef{ID: r.ID, Status: r.Status, Identifier: r.Identifier}
	if r.Subject != nil {
		m.Subject = r.Subject.Reference
	}
	if r.Content != nil {
		m.Hash = r.Content.Hash
	}
	return m
}

// SearchMedia runs GET /Media with query and returns the Media entries of
// every page (OperationOutcome entries, which ALEX puts in empty results,
// are dropped). Use identifier=system|value where the server allows it, or
// patient.identifier=<NHI system>|<NHI> on ALEX.
func (c *Client) SearchMedia(ctx context.Context, query url.Values) ([]MediaRef, error) {
	var out []MediaRef
	err := c.eachMedia(ctx, query, func(m Media) {
		r := MediaRef{ID: m.ID, Status: m.Status, Identifier: m.Identifier}
		if m.Subject != nil {
			r.Subject = m.Subject.Reference
		}
		if m.Content != nil {
			r.Hash = m.Content.Hash
		}
		out = append(out, r)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PatientNHI reads Patient/{id} and returns its NHI ("" if it has none).
func (c *Client) PatientNHI(ctx context.Context, patientID string) (string, error) {
	var p struct {
		Identifier []Identifier `json:"identifier"`
	}
	if err := c.getJSON(ctx, "patient", "Patient/"+url.PathEscape(patientID), &p); err != nil {
		return "", err
	}
	for _, id := range p.Identifier {
		if id.System == NHISystem {
			return id.Value, nil
		}
	}
	return "", nil
}

// DeleteMedia deletes Media/{id}; one already gone is not an error.
func (c *Client) DeleteMedia(ctx context.Context, id string) error {
	for attempt := 0; ; attempt++ {
		_, _, err := c.do(ctx, "delete", http.MethodDelete, "Media/"+url.PathEscape(id), nil, nil, 0)
		if retryToken(err, attempt) {
			continue
		}
		var e *Error
		if errors.As(err, &e) && (e.Status == http.StatusNotFound || e.Status == http.StatusGone) {
			return nil
		}
		return err
	}
}

// MarkEnteredInError sets Media/{id}'s status to entered-in-error with a
// JSON Patch.
func (c *Client) MarkEnteredInError(ctx context.Context, id string) error {
	patch := []byte(`[{"op":"replace","path":"/status","value":"entered-in-error"}]`)
	for attempt := 0; ; attempt++ {
		hdr := http.Header{"Content-Type": {"application/json-patch+json"}}
		_, _, err := c.do(ctx, "mark-entered-in-error", http.MethodPatch, "Media/"+url.PathEscape(id), hdr,
			io.NopCloser(bytes.NewReader(patch)), int64(len(patch)))
		if retryToken(err, attempt) {
			continue
		}
		return err
	}
}

func (c *Client) getJSON(ctx context.Context, op, ref string, v any) error {
	for attempt := 0; ; attempt++ {
		_, raw, err := c.do(ctx, op, http.MethodGet, ref, nil, nil, 0)
		if retryToken(err, attempt) {
			continue
		}
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, v); err != nil {
			return &Error{Op: op, Status: http.StatusOK, Message: "undecodable answer: " + err.Error()}
		}
		return nil
	}
}

// retryToken reports whether err is a 401 worth one more try with a fresh
// token.
func retryToken(err error, attempt int) bool {
	var e *Error
	return attempt == 0 && errors.As(err, &e) && e.Status == http.StatusUnauthorized
}

// do sends one request. ref is relative to the base, or an absolute URL on
// the same host (a paging link). A non-2xx answer becomes an *Error.
func (c *Client) do(ctx context.Context, op, method, ref string, hdr http.Header, body io.ReadCloser, length int64) (*http.Response, []byte, error) {
	u, err := c.resolve(ref)
	if err != nil {
		if body != nil {
			body.Close()
		}
		return nil, nil, &Error{Op: op, Status: http.StatusBadRequest, Message: err.Error()}
	}
	tok, err := c.tok.get(ctx)
	if err != nil {
		if body != nil {
			body.Close()
		}
		return nil, nil, &Error{Op: op + " token", Err: err, NotSent: true}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var rb io.Reader
	if body != nil {
		rb = body
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rb)
	if err != nil {
		if body != nil {
			body.Close()
		}
		return nil, nil, &Error{Op: op, Err: err}
	}
	if body != nil {
		req.ContentLength = length
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	cid := newUUID()
	logPath := redactPath(u.Path)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("mt-facilityid", c.cfg.FacilityID)
	req.Header.Set("mt-correlationid", cid)
	if c.cfg.AppID != "" {
		req.Header.Set("mt-appid", c.cfg.AppID)
	}
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		d := time.Since(start)
		c.observe(op, 0, d)
		c.log.Warn("alex.request", "op", op, "method", method, "path", logPath, "status", 0, "duration_ms", d.Milliseconds(), "mt_correlationid", cid, "err", err.Error())
		return nil, nil, &Error{Op: op, Err: err, CorrelationID: cid, NotSent: notSent(err)}
	}
	defer resp.Body.Close()
	raw, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	d := time.Since(start)
	c.observe(op, resp.StatusCode, d)
	level := slog.LevelInfo
	if resp.StatusCode >= 400 {
		level = slog.LevelWarn
	}
	c.log.Log(ctx, level, "alex.request", "op", op, "method", method, "path", logPath, "status", resp.StatusCode,
		"duration_ms", d.Milliseconds(), "mt_correlationid", cid)
	if resp.StatusCode == http.StatusUnauthorized {
		c.tok.invalidate(tok.AccessToken)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp, raw, errorFrom(op, resp, raw, cid)
	}
	if rerr != nil {
		return resp, raw, &Error{Op: op, Err: fmt.Errorf("read answer: %w", rerr), CorrelationID: cid}
	}
	return resp, raw, nil
}

// notSent reports whether a transport error happened before any of the
// request could reach the server: the connection was never made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// redactPath keeps patient ids out of logs: .../Patient/{id} is logged
// without the id.
func redactPath(p string) string {
	if i := strings.Index(p, "/Patient/"); i >= 0 {
		return p[:i] + "/Patient/{id}"
	}
	return p
}

func (c *Client) resolve(ref string) (*url.URL, error) {
	r, err := url.Parse(ref)
	if err != nil {
		return nil, err
	}
	if r.IsAbs() {
		if r.Host != c.base.Host {
			return nil, fmt.Errorf("link to another host")
		}
		return r, nil
	}
	u := *c.base
	u.Path = strings.TrimRight(c.base.Path, "/") + "/" + r.Path
	u.RawPath = ""
	u.RawQuery = r.RawQuery
	return &u, nil
}

func (c *Client) observe(op string, status int, d time.Duration) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(op, status, d)
	}
}

// errorFrom reads an error answer tolerantly: an OperationOutcome, ALEX's
// plain {"statusCode","message"}, or anything else as text.
func errorFrom(op string, resp *http.Response, raw []byte, cid string) *Error {
	e := &Error{Op: op, Status: resp.StatusCode, CorrelationID: cid}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if s, err := strconv.Atoi(strings.TrimSpace(ra)); err == nil && s >= 0 {
			e.RetryAfter = time.Duration(s) * time.Second
		} else if t, err := http.ParseTime(ra); err == nil {
			e.RetryAfter = max(time.Until(t), 0)
		}
	}
	var oo OperationOutcome
	var plain struct {
		Message string `json:"message"`
		Error   any    `json:"error"`
	}
	switch {
	case json.Unmarshal(raw, &oo) == nil && oo.ResourceType == "OperationOutcome" && len(oo.Issue) > 0:
		is := oo.Issue[0]
		e.Code = is.Code
		e.Message = is.Diagnostics
		if e.Message == "" && is.Details != nil {
			e.Message = is.Details.Text
		}
	case json.Unmarshal(raw, &plain) == nil && plain.Message != "":
		e.Message = plain.Message
	default:
		e.Message = strings.TrimSpace(string(raw))
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	if len(e.Message) > 300 {
		e.Message = e.Message[:300] + "…"
	}
	return e
}

// parseLocation reads .../Media/{id}/_history/{vid}.
func parseLocation(loc string) (id, vid string) {
	if loc == "" {
		return "", ""
	}
	if u, err := url.Parse(loc); err == nil {
		loc = u.Path
	}
	parts := strings.Split(strings.Trim(loc, "/"), "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if parts[i] == "Media" && i+1 < len(parts) {
			id = parts[i+1]
			if i+3 < len(parts) && parts[i+2] == "_history" {
				vid = parts[i+3]
			}
			return id, vid
		}
	}
	return "", ""
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// tokenCache holds one access token, renews it early, and forgets it when
// the server refuses it.
type tokenCache struct {
	mu    sync.Mutex
	tok   *oauth2.Token
	renew time.Time // when to fetch the next one
	early time.Duration
	fetch func(context.Context) (*oauth2.Token, error)
}

func (t *tokenCache) get(ctx context.Context) (*oauth2.Token, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if t.tok != nil && (t.tok.Expiry.IsZero() || now.Before(t.renew)) {
		return t.tok, nil
	}
	tok, err := t.fetch(ctx)
	if err != nil {
		return nil, err
	}
	t.tok = tok
	// Renew early, but never sooner than three quarters of a short
	// token's life.
	life := tok.Expiry.Sub(now)
	t.renew = tok.Expiry.Add(-min(t.early, life/4))
	return tok, nil
}

func (t *tokenCache) invalidate(access string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok != nil && t.tok.AccessToken == access {
		t.tok = nil
	}
}
