// Package ablysim is a local stand-in for Ably, for tests and the local
// stack. It speaks the part of Ably's REST wire format the relay uses
// (POST /channels/{name}/messages with a JSON array or object body, HTTP
// Basic auth with the key "name:secret", Ably error bodies
// {"error":{"code","statusCode","message"}}), drops repeated message ids
// within two minutes as Ably does, enforces the 64 KiB publish size and,
// optionally, the per-channel message rate, injects faults on demand (error
// statuses, slow answers, answers lost after the messages were taken), and
// lets a test inspect everything it received.
//
// It also serves GET /sse like Ably's SSE endpoint, checking the browser
// JWT's signature, expiry and capability, so a test can show that a token
// for one user is refused on another user's channel.
//
// Point ably-go at it with
//
//	ably.NewREST(ably.WithKey(key), ably.WithEndpoint(srv.Endpoint()),
//		ably.WithTLS(false), ably.WithInsecureAllowBasicAuthWithoutTLS(),
//		ably.WithUseBinaryProtocol(false))
package ablysim

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clinicalimages/clinimg/pkg/realtime"
)

// Options configure a Server. Zero values take the defaults named.
type Options struct {
	// Keys are the API keys accepted for publishing and for verifying
	// browser tokens. At least one is required.
	Keys []realtime.Key
	// DedupeWindow is how long a message id is remembered (default 2 min,
	// as Ably).
	DedupeWindow time.Duration
	// MaxPublishSize bounds the size of one publish, all its messages
	// together (default 64 KiB, as Ably).
	MaxPublishSize int
	// ChannelRate, if positive, is the messages per second one channel
	// accepts (burst of as many); a publish beyond it is refused with 429
	// and code 42910. Ably's default limit is 50.
	ChannelRate int
	// History is about how many accepted messages (and publish requests)
	// are kept for inspection and SSE resume (default 100,000; the oldest
	// go first, a quarter at a time).
	History int
	// Heartbeat is the SSE keep-alive interval (default 15 s).
	Heartbeat time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Message is one message as received.
type Message struct {
	Serial    int64  // order of acceptance across the server, from 1
	Channel   string //
	ID        string
	Name      string
	ClientID  string
	Data      string // as sent: a JSON string for Encoding "json"
	Encoding  string
	Timestamp int64 // acceptance time, ms since the epoch
}

// Request is one publish request as received, whatever its outcome.
type Request struct {
	Channel  string
	IDs      []string
	Names    []string
	Bytes    int
	Status   int  // the status answered (0 if the client gave up first)
	Dupes    int  // messages dropped as repeats
	Accepted int  // messages taken (new ids), whatever was answered
	Faulted  bool // a Fault was applied
}

// Fault changes how one publish request is answered. Faults are applied in
// the order injected, one per request.
type Fault struct {
	// Status, if not 0, is answered with an Ably error body (code Code, or
	// a default for the status).
	Status int
	Code   int
	// Delay holds the answer back; longer than the client's timeout makes
	// a timeout. The server stops waiting when the client goes away.
	Delay time.Duration
	// Accept takes the messages before the fault applies: the client sees
	// an error or a timeout although Ably has the messages, and its retry
	// must be deduplicated.
	Accept bool
}

// Outage refuses every publish to Channel until Until with Status and an
// Ably error body (Code, or a default for the status), as Ably does while a
// channel is unavailable or a key has lost its capability for it.
type Outage struct {
	Channel string
	Until   time.Time
	Status  int
	Code    int
}

// Server is the stand-in. It is an http.Handler; Start also listens.
type Server struct {
	opt Options

	mu       sync.Mutex
	faults   []Fault
	outages  []Outage
	seen     map[string]time.Time // channel + "\x00" + message id -> first accepted (Ably dedupes per channel)
	messages []Message
	requests []*Request
	buckets  map[string]*bucket
	serial   int64
	subs     map[string]map[*subscriber]struct{}
	refused  map[int]int // error code -> count

	ln  net.Listener
	srv *http.Server
}

// New returns a stand-in that is not listening; use it as an http.Handler.
func New(opt Options) *Server {
	if opt.DedupeWindow <= 0 {
		opt.DedupeWindow = 2 * time.Minute
	}
	if opt.MaxPublishSize <= 0 {
		opt.MaxPublishSize = 64 * 1024
	}
	if opt.History <= 0 {
		opt.History = 100_000
	}
	if opt.Heartbeat <= 0 {
		opt.Heartbeat = 15 * time.Second
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	return &Server{opt: opt, seen: map[string]time.Time{}, buckets: map[string]*bucket{},
		subs: map[string]map[*subscriber]struct{}{}, refused: map[int]int{}}
}

// Start listens on addr ("127.0.0.1:0" for any port) and serves until
// Close.
func Start(addr string, opt Options) (*Server, error) {
	if len(opt.Keys) == 0 {
		return nil, errors.New("ablysim: no keys")
	}
	s := New(opt)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ablysim listen: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Endpoint is the host:port to give ably.WithEndpoint (an IP, since ably-go
// reads "localhost:PORT" as a routing name).
func (s *Server) Endpoint() string { return s.ln.Addr().String() }

// URL is http://host:port.
func (s *Server) URL() string { return "http://" + s.Endpoint() }

// Close stops listening and ends open SSE streams.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.mu.Lock()
	for _, set := range s.subs {
		for sub := range set {
			sub.close()
		}
	}
	s.mu.Unlock()
	if err := s.srv.Shutdown(ctx); err != nil {
		return s.srv.Close()
	}
	return nil
}

// Inject queues faults for the next publish requests.
func (s *Server) Inject(f ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f...)
}

// Refuse starts an outage; outages of one channel may overlap.
func (s *Server) Refuse(o Outage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outages = append(s.outages, o)
}

// refusing returns the outage in force on channel, if any.
func (s *Server) refusing(channel string) (Outage, bool) {
	now := s.opt.Now()
	for _, o := range s.outages {
		if o.Channel == channel && now.Before(o.Until) {
			return o, true
		}
	}
	return Outage{}, false
}

// PendingFaults is how many injected faults have not been applied yet.
func (s *Server) PendingFaults() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.faults)
}

// Messages returns the messages accepted on channel ("" for all), in order,
// each id once per channel.
func (s *Server) Messages(channel string) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Message
	for _, m := range s.messages {
		if channel == "" || m.Channel == channel {
			out = append(out, m)
		}
	}
	return out
}

// Requests returns every publish request received, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		out[i] = *r
	}
	return out
}

// Refused counts the publishes refused with each Ably error code (faults
// excluded): size, ids, rate, auth.
func (s *Server) Refused() map[int]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[int]int{}
	for k, v := range s.refused {
		out[k] = v
	}
	return out
}

// ServeHTTP routes POST /channels/{name}/messages and GET /sse.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/channels/") && strings.HasSuffix(r.URL.Path, "/messages"):
		s.publish(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/sse":
		s.sse(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/time":
		_ = json.NewEncoder(w).Encode([]int64{s.opt.Now().UnixMilli()})
	default:
		realtime.WriteError(w, realtime.ErrorInfo{Code: 40400, StatusCode: http.StatusNotFound, Message: "not found"})
	}
}

// wireMessage is a message as ably-go sends it.
type wireMessage struct {
	ID       string          `json:"id"`
	Name     string          `json:"name"`
	ClientID string          `json:"clientId"`
	Data     json.RawMessage `json:"data"`
	Encoding string          `json:"encoding"`
	Extras   json.RawMessage `json:"extras"`
}

// readPublish checks a publish request and decodes its messages, answering
// the request itself when it is refused.
func (s *Server) readPublish(w http.ResponseWriter, r *http.Request) (string, []wireMessage, Request, bool) {
	channel := strings.TrimSuffix(strings.TrimPrefix(r.URL.EscapedPath(), "/channels/"), "/messages")
	channel, err := url.PathUnescape(channel)
	if err != nil || channel == "" {
		s.refuse(w, realtime.ErrorInfo{Code: realtime.CodeBadChannel, StatusCode: 400, Message: "invalid channel name"})
		return "", nil, Request{}, false
	}
	if !s.basicAuth(r) {
		s.refuse(w, realtime.ErrorInfo{Code: realtime.CodeBadCredentials, StatusCode: 401, Message: "invalid credentials"})
		return "", nil, Request{}, false
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		s.refuse(w, realtime.ErrorInfo{Code: realtime.CodeBadRequest, StatusCode: 400, Message: "only the JSON protocol is supported: use WithUseBinaryProtocol(false)"})
		return "", nil, Request{}, false
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		return "", nil, Request{}, false
	}
	msgs, err := decodeMessages(body)
	if err != nil {
		s.refuse(w, realtime.ErrorInfo{Code: realtime.CodeBadRequest, StatusCode: 400, Message: "malformed message body"})
		return "", nil, Request{}, false
	}
	req := Request{Channel: channel}
	for _, m := range msgs {
		req.IDs = append(req.IDs, m.ID)
		req.Names = append(req.Names, m.Name)
		req.Bytes += len(m.Name) + len(m.ClientID) + len(dataString(m.Data)) + len(m.Extras)
	}
	return channel, msgs, req, true
}

// record keeps req in the history and takes the next scripted fault, or
// answers the request itself (refused) while its channel is in an outage.
func (s *Server) record(w http.ResponseWriter, channel string, req Request) (rec *Request, fault *Fault, refused bool) {
	s.mu.Lock()
	s.requests = trim(s.requests, s.opt.History)
	rec = &req
	s.requests = append(s.requests, rec)
	if o, ok := s.refusing(channel); ok {
		req.Status = o.Status
		req.Faulted = true
		s.mu.Unlock()
		code := o.Code
		if code == 0 {
			code = o.Status * 100
		}
		realtime.WriteError(w, realtime.ErrorInfo{Code: code, StatusCode: o.Status, Message: "channel refused (outage)"})
		return nil, nil, true
	}
	defer s.mu.Unlock()
	if len(s.faults) > 0 {
		f := s.faults[0]
		s.faults = s.faults[1:]
		fault = &f
		req.Faulted = true
	}
	return rec, fault, false
}

func (s *Server) publish(w http.ResponseWriter, r *http.Request) {
	channel, msgs, req, ok := s.readPublish(w, r)
	if !ok {
		return
	}
	rec, fault, refused := s.record(w, channel, req)
	if refused {
		return
	}

	setStatus := func(status, dupes int) {
		s.mu.Lock()
		rec.Status = status
		rec.Dupes = dupes
		s.mu.Unlock()
	}

	if fault != nil && !fault.Accept {
		s.applyFault(w, r, *fault, setStatus)
		return
	}
	if e, ok := s.check(channel, msgs, req.Bytes); !ok {
		setStatus(e.StatusCode, 0)
		s.refuse(w, e)
		return
	}
	ids, dupes := s.accept(channel, msgs)
	s.mu.Lock()
	rec.Accepted = len(msgs) - dupes
	s.mu.Unlock()
	if fault != nil {
		setStatus(0, dupes)
		s.applyFault(w, r, *fault, func(status, _ int) { setStatus(status, dupes) })
		return
	}
	setStatus(http.StatusCreated, dupes)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{"channel": channel, "messageIds": ids})
}

func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, f Fault, setStatus func(int, int)) {
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return // the client gave up: status stays 0
		}
	}
	status := f.Status
	if status == 0 {
		status = http.StatusCreated
	}
	setStatus(status, 0)
	if status < 300 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte("{}"))
		return
	}
	code := f.Code
	if code == 0 {
		code = status * 100
	}
	realtime.WriteError(w, realtime.ErrorInfo{Code: code, StatusCode: status, Message: "injected fault"})
}

// check applies Ably's publish rules: total size, id form, channel rate.
func (s *Server) check(channel string, msgs []wireMessage, size int) (realtime.ErrorInfo, bool) {
	if size > s.opt.MaxPublishSize {
		s.count(realtime.CodeMessageTooLarge)
		return realtime.ErrorInfo{Code: realtime.CodeMessageTooLarge, StatusCode: 413,
			Message: fmt.Sprintf("maximum message length exceeded (size=%d, max=%d)", size, s.opt.MaxPublishSize)}, false
	}
	if !idsValid(msgs) {
		s.count(realtime.CodeBadMessageID)
		return realtime.ErrorInfo{Code: realtime.CodeBadMessageID, StatusCode: 400,
			Message: "message ids in a multi-message publish must be <base>:<index>"}, false
	}
	if s.opt.ChannelRate > 0 {
		s.mu.Lock()
		b := s.buckets[channel]
		if b == nil {
			b = &bucket{tokens: float64(s.opt.ChannelRate), at: s.opt.Now()}
			s.buckets[channel] = b
		}
		ok := b.take(len(msgs), float64(s.opt.ChannelRate), s.opt.Now())
		s.mu.Unlock()
		if !ok {
			s.count(realtime.CodeRateLimited)
			return realtime.ErrorInfo{Code: realtime.CodeRateLimited, StatusCode: 429, Message: "rate limit exceeded"}, false
		}
	}
	return realtime.ErrorInfo{}, true
}

func (s *Server) count(code int) {
	s.mu.Lock()
	s.refused[code]++
	s.mu.Unlock()
}

// accept stores the messages whose ids were not seen on channel within the window and
// hands them to SSE subscribers.
func (s *Server) accept(channel string, msgs []wireMessage) (ids []string, dupes int) {
	now := s.opt.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, at := range s.seen {
		if now.Sub(at) > s.opt.DedupeWindow {
			delete(s.seen, id)
		}
	}
	for _, m := range msgs {
		if m.ID != "" {
			seen := channel + "\x00" + m.ID
			if _, dup := s.seen[seen]; dup {
				dupes++
				ids = append(ids, m.ID)
				continue
			}
			s.seen[seen] = now
		}
		s.serial++
		id := m.ID
		if id == "" {
			id = "sim-" + strconv.FormatInt(s.serial, 10)
		}
		msg := Message{Serial: s.serial, Channel: channel, ID: id, Name: m.Name, ClientID: m.ClientID,
			Data: dataString(m.Data), Encoding: m.Encoding, Timestamp: now.UnixMilli()}
		s.messages = append(s.messages, msg)
		s.messages = trim(s.messages, s.opt.History)
		ids = append(ids, id)
		for sub := range s.subs[channel] {
			sub.send(msg)
		}
	}
	return ids, dupes
}

func (s *Server) refuse(w http.ResponseWriter, e realtime.ErrorInfo) {
	if e.Code == realtime.CodeBadCredentials || e.Code == realtime.CodeBadChannel {
		s.count(e.Code)
	}
	realtime.WriteError(w, e)
}

func (s *Server) basicAuth(r *http.Request) bool {
	name, secret, ok := r.BasicAuth()
	if !ok {
		return false
	}
	for _, k := range s.opt.Keys {
		if subtle.ConstantTimeCompare([]byte(k.Name), []byte(name)) == 1 &&
			subtle.ConstantTimeCompare([]byte(k.Secret), []byte(secret)) == 1 {
			return true
		}
	}
	return false
}

func decodeMessages(body []byte) ([]wireMessage, error) {
	trimmed := strings.TrimSpace(string(body))
	if strings.HasPrefix(trimmed, "{") {
		var m wireMessage
		if err := json.Unmarshal(body, &m); err != nil {
			return nil, err
		}
		return []wireMessage{m}, nil
	}
	var ms []wireMessage
	if err := json.Unmarshal(body, &ms); err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return nil, errors.New("no messages")
	}
	return ms, nil
}

// idsValid: in a publish of several messages with ids, every id is
// <base>:<index> with one base and the message's position as index.
func idsValid(msgs []wireMessage) bool {
	if len(msgs) < 2 {
		return true
	}
	hasID := false
	for _, m := range msgs {
		if m.ID != "" {
			hasID = true
		}
	}
	if !hasID {
		return true
	}
	var base string
	for i, m := range msgs {
		j := strings.LastIndexByte(m.ID, ':')
		if j <= 0 || m.ID[j+1:] != strconv.Itoa(i) {
			return false
		}
		if i == 0 {
			base = m.ID[:j]
		} else if m.ID[:j] != base {
			return false
		}
	}
	return true
}

// dataString is the data as the wire carries it: a JSON string's value, or
// the raw JSON of anything else.
func dataString(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s
	}
	return string(raw)
}

type bucket struct {
	tokens float64
	at     time.Time
}

func (b *bucket) take(n int, rate float64, now time.Time) bool {
	b.tokens = min(rate, b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
	if float64(n) > b.tokens {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// trim drops the oldest entries once list is a quarter over n.
func trim[T any](list []T, n int) []T {
	if len(list) <= n+n/4 {
		return list
	}
	return append([]T(nil), list[len(list)-n:]...)
}
