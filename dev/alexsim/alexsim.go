// Package alexsim is a stand-in for Medtech's ALEX FHIR R4 API, faithful
// where the committer depends on it: an OAuth2 client-credentials token
// endpoint whose tokens expire, the mt-facilityid check, POST /Media that
// validates R4 Media strictly and requires an identifier, search only by
// patient.identifier, ALEX's mix of OperationOutcome and plain JSON errors,
// optional capabilities (conditional create, transaction Bundles, DELETE,
// entered-in-error), fault injection, and an inspection API for tests.
//
// Routes (the FHIR base is <url>/FHIR):
//
//	POST /oauth2/v2.0/token        form client_id, client_secret, grant_type, scope
//	POST /FHIR/Media               create (If-None-Exist with conditional-create)
//	GET  /FHIR/Media?patient.identifier=<NHI system>|<NHI>   (identifier=... with search)
//	GET  /FHIR/Media/{id}          read
//	DELETE /FHIR/Media/{id}        with delete
//	PATCH /FHIR/Media/{id}         JSON Patch of /status, with entered-in-error
//	POST /FHIR                     transaction Bundle, with transaction
//	GET  /FHIR/Patient/{id}        a registered patient with its NHI
//	GET  /_sim/media               every Media stored (inspection, no auth)
//
// Use it with httptest (httptest.NewServer(alexsim.New(opt))) or Start.
package alexsim

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/clinicalimages/clinimg/pkg/fhir"
)

// Defaults for a simulator built with zero Options.
const (
	DefaultClientID     = "clinimg-local"
	DefaultClientSecret = "local-secret"
	DefaultScope        = "api://alex-sim/.default"
	DefaultFacility     = "F2N060-E"
	// TokenPath is the token endpoint's path.
	TokenPath = "/oauth2/v2.0/token"
	// BasePath is the FHIR base's path.
	BasePath = "/FHIR"
)

// Options configure a Server. Zero values take the defaults named.
type Options struct {
	// Clients maps client id to secret (default DefaultClientID:
	// DefaultClientSecret). More can be added with AddClient.
	Clients map[string]string
	// Scope, if set, is the only scope the token endpoint grants (default
	// DefaultScope; "*" accepts any).
	Scope string
	// Facilities are the mt-facilityid values known (default
	// DefaultFacility). Others get 403 "Practice Facility not found".
	Facilities []string
	// Patients maps patient id to NHI, for GET /Patient/{id} and
	// patient.identifier searches. Media for other patients are accepted too.
	Patients map[string]string
	// AutoPatients answers GET /Patient/{id} for any id, inventing a test
	// NHI (ZZZ + 4 digits) the first time, so a committer can look Media up
	// by NHI as it must on ALEX (handy for deploy/local).
	AutoPatients bool
	// TokenTTL is the lifetime of an access token (default 3599 s).
	TokenTTL time.Duration
	// Latency slows every request (default none).
	Latency time.Duration
	// Capabilities switch on what ALEX does not publish (default none).
	Capabilities fhir.Capabilities
	// DropData stores Media without content.data (size and hash are kept),
	// for long runs where memory matters.
	DropData bool
	// MaxBody bounds a request body (default 64 MiB).
	MaxBody int64
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger logs one line per request (default discard).
	Logger *slog.Logger
}

// Stored is one Media the simulator holds.
type Stored struct {
	ID            string
	VersionID     string
	Identifier    fhir.Identifier // the first identifier
	Status        string          // completed, or entered-in-error once marked
	Deleted       bool
	PatientRef    string
	ContentType   string
	Size          int64
	Hash          string
	Resource      []byte // the resource as stored (with id and meta)
	Body          []byte // the request body exactly as received (nil with DropData)
	CorrelationID string
	Created       time.Time
}

// Request is one request the simulator answered, for tests.
type Request struct {
	Method        string
	Path          string
	Status        int
	CorrelationID string
	FacilityID    string
	AppID         string
	Identifier    string // of a POSTed Media
	Fault         string // the injected fault, if any
}

// Hooks let a test act at precise points of a Media create. A non-nil error
// from a hook drops the connection (the client sees a reset).
type Hooks struct {
	// MediaReceived runs when a valid POST /Media arrived, before it is
	// stored.
	MediaReceived func(identifier string) error
	// MediaStored runs after the Media is stored, before the answer is sent.
	MediaStored func(identifier, id string) error
	// Fault, if set, picks the fault of every FHIR request (path below the
	// base, the identifier of a POSTed Media) instead of the Rules; nil
	// lets the request through. A fault with AfterStore on POST /Media
	// strikes after the Media is stored. It lets a test draw each
	// request's fate from a seeded schedule.
	Fault func(method, path, identifier string) *Fault
}

// Server is the simulator. Its methods are safe for concurrent use.
type Server struct {
	opt Options

	mu         sync.Mutex
	clients    map[string]string
	facilities map[string]bool
	patients   map[string]string
	tokens     map[string]time.Time
	media      []*Stored
	byID       map[string]*Stored
	requests   []Request
	rules      []*rule
	hooks      Hooks
	latency    time.Duration
	caps       fhir.Capabilities

	srv *http.Server
	url string
}

// New returns a simulator; serve it with httptest.NewServer or Start.
func New(opt Options) *Server {
	if opt.Clients == nil {
		opt.Clients = map[string]string{DefaultClientID: DefaultClientSecret}
	}
	if opt.Scope == "" {
		opt.Scope = DefaultScope
	}
	if opt.Facilities == nil {
		opt.Facilities = []string{DefaultFacility}
	}
	if opt.TokenTTL <= 0 {
		opt.TokenTTL = 3599 * time.Second
	}
	if opt.MaxBody <= 0 {
		opt.MaxBody = 64 << 20
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opt: opt, clients: map[string]string{}, facilities: map[string]bool{}, patients: map[string]string{},
		tokens: map[string]time.Time{}, byID: map[string]*Stored{}, latency: opt.Latency, caps: opt.Capabilities,
	}
	for id, secret := range opt.Clients {
		s.clients[id] = secret
	}
	for _, f := range opt.Facilities {
		s.facilities[f] = true
	}
	for id, nhi := range opt.Patients {
		s.patients[id] = nhi
	}
	return s
}

// Start serves on addr ("127.0.0.1:0" for any free port) until Close, and
// returns the server's URL (http://host:port).
func (s *Server) Start(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("alexsim listen: %w", err)
	}
	s.mu.Lock()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.url = "http://" + ln.Addr().String()
	srv := s.srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
	return s.url, nil
}

// Close stops a server begun with Start.
func (s *Server) Close() error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return srv.Close()
	}
	return nil
}

// Env is the committer's ALEX configuration for a simulator served at
// serverURL, with the default client and facility: ALEX_API_URL,
// ALEX_OAUTH_TOKEN_URL, ALEX_CLIENT_ID, ALEX_CLIENT_SECRET, ALEX_SCOPE,
// ALEX_FACILITY_ID, ALEX_CAPABILITIES.
func (s *Server) Env(serverURL string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, secret := DefaultClientID, s.clients[DefaultClientID]
	if secret == "" {
		for k, v := range s.clients {
			id, secret = k, v
			break
		}
	}
	fac := DefaultFacility
	if !s.facilities[fac] {
		for f := range s.facilities {
			fac = f
			break
		}
	}
	scope := s.opt.Scope
	if scope == "*" {
		scope = DefaultScope
	}
	return map[string]string{
		"ALEX_API_URL":         strings.TrimRight(serverURL, "/") + BasePath,
		"ALEX_OAUTH_TOKEN_URL": strings.TrimRight(serverURL, "/") + TokenPath,
		"ALEX_CLIENT_ID":       id,
		"ALEX_CLIENT_SECRET":   secret,
		"ALEX_SCOPE":           scope,
		"ALEX_FACILITY_ID":     fac,
		"ALEX_CAPABILITIES":    s.caps.String(),
	}
}

// AddClient registers OAuth2 client credentials.
func (s *Server) AddClient(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[id] = secret
}

// AddFacility registers an mt-facilityid.
func (s *Server) AddFacility(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.facilities[id] = true
}

// AddPatient registers a patient and its NHI; an empty nhi registers a
// patient without one (its Patient has no identifier).
func (s *Server) AddPatient(id, nhi string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.patients[id] = nhi
}

// Seed stores a Media as if it had been created earlier, with photo as its
// content (data, size and SHA-1 hash filled in) and no request recorded:
// a patient's record before a test begins. m is stored as given
// otherwise (it is not validated).
func (s *Server) Seed(m fhir.Media, photo []byte) Stored {
	if m.Content == nil {
		m.Content = &fhir.Attachment{ContentType: "image/jpeg"}
	}
	c := *m.Content
	sum := sha1.Sum(photo)
	c.Data, c.Size, c.Hash = base64.StdEncoding.EncodeToString(photo), int64(len(photo)), base64.StdEncoding.EncodeToString(sum[:])
	m.Content = &c
	return s.store(m, nil, "")
}

// SetLatency slows every request from now on.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetCapabilities switches capabilities from now on.
func (s *Server) SetCapabilities(c fhir.Capabilities) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.caps = c
}

// SetHooks installs hooks (the zero Hooks removes them).
func (s *Server) SetHooks(h Hooks) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks = h
}

// ExpireTokens makes every token issued so far expired.
func (s *Server) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t := range s.tokens {
		s.tokens[t] = time.Time{}
	}
}

// Media returns every Media stored, in order of creation (deleted ones
// included, marked Deleted).
func (s *Server) Media() []Stored {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Stored, 0, len(s.media))
	for _, m := range s.media {
		out = append(out, *m)
	}
	return out
}

// ByIdentifier returns the Media, not deleted, carrying identifier
// system|value.
func (s *Server) ByIdentifier(system, value string) []Stored {
	var out []Stored
	for _, m := range s.Media() {
		if !m.Deleted && m.Identifier.System == system && m.Identifier.Value == value {
			out = append(out, m)
		}
	}
	return out
}

// Live counts Media neither deleted nor entered-in-error: what a GP would
// see in the record.
func (s *Server) Live() int {
	n := 0
	for _, m := range s.Media() {
		if !m.Deleted && m.Status != "entered-in-error" {
			n++
		}
	}
	return n
}

// LiveByIdentifier counts live Media per identifier value.
func (s *Server) LiveByIdentifier() map[string]int {
	out := map[string]int{}
	for _, m := range s.Media() {
		if !m.Deleted && m.Status != "entered-in-error" {
			out[m.Identifier.Value]++
		}
	}
	return out
}

// Requests returns every request answered so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Reset forgets every Media, request, token and fault.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.media, s.byID, s.requests, s.rules, s.tokens = nil, map[string]*Stored{}, nil, nil, map[string]time.Time{}
}

func (s *Server) newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Server) record(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, r)
}
