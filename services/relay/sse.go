package relay

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

// SSE is the path of the built-in stream. The format is Ably's (see
// package realtime):
//
//	GET /sse?v=1.2&channels=session%3A<userId>&accessToken=<jwt>[&lastEvent=<id>]
//	Last-Event-ID: <id>   (sent by a reconnecting EventSource; wins over lastEvent)
//
//	event: message
//	id: <JetStream stream sequence>
//	data: {"id":"<event id>","name":"image-uploaded","timestamp":<ms>,"encoding":"json","channel":"session:<userId>","data":"<payload as a JSON string>"}
//
// with a ":" comment line every RELAY_HEARTBEAT. The token is the API's
// realtime token (HS256 with REALTIME_SIGNING_KEY): a bad or missing token
// answers 401 (code 40101/40144), an expired one 401 (40142), a channel
// outside its capability 401 (40160, as Ably answers), a channel that is not a session's 400
// (40010), each as {"error":{"code","statusCode","message"}}. When the token
// expires mid-stream the relay sends `event: error` with data
// {"code":40142,"statusCode":401,"message":"access token expired"} and
// closes; the page renews the token and reopens with lastEvent. With an id,
// the stream first replays every event of the channel after it from
// JetStream, then continues live, with no gap and no repeat. A stream whose
// client falls more than RELAY_SUBSCRIBER_BUFFER events behind is closed;
// EventSource reopens it with Last-Event-ID and loses nothing.
//
// A phone's token covers one session's channel, session:<userId>:<sessionId>:
// its stream delivers and replays only the events of that session (by the
// sessionId in each event), never another patient's. Once that session is
// replaced (a session.started naming it as the previous one, or any later
// session.started) or the phone is removed (session.unpaired naming it),
// the stream ends with `event: error` 40141, and a new request with the
// same token is refused with 40141 (status 401).
const SSE = "/sse"

// frame is one event encoded once for every subscriber of its channel,
// with what a phone's stream is scoped by.
type frame struct {
	seq      uint64
	b        []byte // on the user's channel
	bs       []byte // on the session's channel (nil without a session)
	typ      events.Type
	session  string // the session the event belongs to
	previous string // session.started: the session it replaced
	phone    string // session.paired/unpaired: the phone concerned
}

// subscriber is one open stream.
type subscriber struct {
	refs    []realtime.Ref
	phone   string // the phone a session-channel token was issued to
	ch      chan frame
	done    chan struct{}
	once    sync.Once
	slow    atomic.Bool
	revoked atomic.Bool
}

func (s *subscriber) end() { s.once.Do(func() { close(s.done) }) }

// encoded is f as s receives it: on the session's channel for a phone.
func (s *subscriber) encoded(f frame) []byte {
	if f.bs != nil && len(s.refs) > 0 && s.refs[0].Session != "" {
		return f.bs
	}
	return f.b
}

func (s *subscriber) users() []string {
	out := make([]string, 0, len(s.refs))
	for _, r := range s.refs {
		if !slices.Contains(out, r.User) {
			out = append(out, r.User)
		}
	}
	return out
}

// verdict is what a subscriber does with one of its user's events.
type verdict int

const (
	skip    verdict = iota // another session's event: never sent
	deliver                // sent
	revoke                 // the stream's session ended or its phone was removed
)

// judge decides f, an event of user, for s. A user's channel (the desktop)
// gets every event of the user; a session's channel only that session's.
// live is false for events read back from the stream (replay, the
// revocation check), where an older session's start is not an end.
func (s *subscriber) judge(user string, f frame, live bool) verdict {
	out := skip
	for _, r := range s.refs {
		if r.User != user {
			continue
		}
		if r.Session == "" {
			return deliver
		}
		switch {
		case f.typ == events.PhoneRemoved && f.phone != "" && f.phone == s.phone:
			return revoke
		case f.typ == events.SessionStarted && f.previous == r.Session:
			return revoke
		case f.session == r.Session:
			out = deliver
		case live && f.typ == events.SessionStarted:
			// A session begun after this one, which expired unreplaced.
			return revoke
		}
	}
	return out
}

// hub reads the stream once per process and fans each event out to the
// subscribers of its user.
type hub struct {
	stream jetstream.Stream
	names  events.Names
	cfg    Config
	log    *slog.Logger
	m      *metrics

	mu   sync.RWMutex
	subs map[string]map[*subscriber]struct{}

	cc      jetstream.ConsumeContext
	running atomic.Bool
	closing chan struct{}
}

func newHub(stream jetstream.Stream, names events.Names, cfg Config, log *slog.Logger, m *metrics) *hub {
	return &hub{stream: stream, names: names, cfg: cfg, log: log, m: m,
		subs: map[string]map[*subscriber]struct{}{}, closing: make(chan struct{})}
}

// start subscribes to every new event with an ordered consumer (no acks; it
// restarts itself after the last sequence seen if NATS hiccups).
func (h *hub) start(ctx context.Context, js jetstream.JetStream) error {
	cons, err := js.OrderedConsumer(ctx, h.names.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{h.names.All()},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("relay hub consumer: %w", err)
	}
	cc, err := cons.Consume(h.onMessage, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		h.log.Warn("relay.hub_consume", "err", err)
	}))
	if err != nil {
		return fmt.Errorf("relay hub consume: %w", err)
	}
	h.cc = cc
	h.running.Store(true)
	return nil
}

func (h *hub) ready(context.Context) error {
	if !h.running.Load() {
		return errors.New("hub not consuming")
	}
	return nil
}

func (h *hub) onMessage(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	f, user, ok := h.frame(msg.Data(), meta.Sequence.Stream)
	if !ok {
		return
	}
	h.m.relayed.WithLabelValues(string(f.typ)).Inc()
	h.dispatch(user, f)
}

// frame encodes one stored event as its SSE frame; ok is false for events
// browsers do not get.
func (h *hub) frame(data []byte, seq uint64) (frame, string, bool) {
	ev, err := events.Decode(data)
	if err != nil {
		h.log.Error("relay.bad_event", "seq", seq, "err", err)
		return frame{}, "", false
	}
	bm, ok, err := toBrowser(ev)
	if err != nil {
		h.log.Error("relay.bad_data", "event_id", ev.ID, "event_type", string(ev.Type), "err", err)
		return frame{}, "", false
	}
	if !ok {
		return frame{}, "", false
	}
	id := strconv.FormatUint(seq, 10)
	env, _ := json.Marshal(bm.envelope())
	f := frame{seq: seq, b: realtime.Frame("message", id, env), typ: ev.Type,
		session: bm.Scope.SessionID, previous: bm.Scope.PreviousSessionID, phone: bm.Scope.PhoneID}
	if sc := bm.SessionChannel(); sc != "" {
		m := bm.envelope()
		m.Channel = sc
		env, _ := json.Marshal(m)
		f.bs = realtime.Frame("message", id, env)
	}
	h.log.Debug("relay.event", ev.LogAttrs()...)
	return f, ev.Subject, true
}

func (h *hub) dispatch(user string, f frame) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.subs[user] {
		switch s.judge(user, f, true) {
		case skip:
			continue
		case revoke:
			s.revoked.Store(true)
			s.end()
			continue
		}
		select {
		case s.ch <- f:
		default:
			// Too far behind: end the stream; the client resumes from its
			// last id and the stream has everything it missed.
			if !s.slow.Swap(true) {
				h.m.dropped.Inc()
			}
			s.end()
		}
	}
}

func (h *hub) add(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, u := range s.users() {
		if h.subs[u] == nil {
			h.subs[u] = map[*subscriber]struct{}{}
		}
		h.subs[u][s] = struct{}{}
	}
	h.m.subscribers.Inc()
}

func (h *hub) remove(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, u := range s.users() {
		delete(h.subs[u], s)
		if len(h.subs[u]) == 0 {
			delete(h.subs, u)
		}
	}
	h.m.subscribers.Dec()
}

// replay returns the frames of s's events after seq, in stream order,
// read straight from the stream, and the position the stream continues
// from: after itself, or 0 when after is beyond the stream's end (an id
// from a stream since recreated, which would otherwise hide every new
// event).
func (h *hub) replay(ctx context.Context, s *subscriber, after uint64) ([]frame, uint64, error) {
	info, err := h.stream.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("replay: %w", err)
	}
	if after > info.State.LastSeq {
		return nil, 0, nil
	}
	var out []frame
	users := s.users()
	for _, u := range users {
		err := h.each(ctx, h.names.Prefix+".*.*."+u, after+1, func(f frame) bool {
			if s.judge(u, f, false) == deliver {
				out = append(out, f)
			}
			return true
		})
		if err != nil {
			return nil, 0, fmt.Errorf("replay %s: %w", u, err)
		}
	}
	if len(users) > 1 {
		slices.SortFunc(out, func(a, b frame) int { return cmp.Compare(a.seq, b.seq) })
	}
	return out, after, nil
}

// revoked reports whether the stream already holds the end of a session
// channel's access: its session replaced or its phone removed. Only the
// few session.started and session.unpaired events of the user are read.
func (h *hub) revoked(ctx context.Context, s *subscriber) (bool, error) {
	found := false
	for _, r := range s.refs {
		if r.Session == "" {
			continue
		}
		for _, t := range []events.Type{events.SessionStarted, events.PhoneRemoved} {
			err := h.each(ctx, h.names.Subject(t, r.User), 1, func(f frame) bool {
				found = s.judge(r.User, f, false) == revoke
				return !found
			})
			if err != nil || found {
				return found, err
			}
		}
	}
	return false, nil
}

// each calls f with every browser-facing event on subject from seq on, in
// order, until f returns false.
func (h *hub) each(ctx context.Context, subject string, seq uint64, f func(frame) bool) error {
	for {
		raw, err := h.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if fr, _, ok := h.frame(raw.Data, raw.Sequence); ok && !f(fr) {
			return nil
		}
		seq = raw.Sequence + 1
	}
}

// serve runs the SSE server on cfg.Addr until ctx is done, then ends every
// stream and stops the hub's consumer.
func (h *hub) serve(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc(SSE, h.handle)
	ready := make(chan string, 1)
	go func() {
		select {
		case addr := <-ready:
			if h.cfg.Listening != nil {
				h.cfg.Listening("sse", addr)
			}
		case <-ctx.Done():
		}
	}()
	defer h.stop()
	// Streams lift the server's read and write deadlines and set one per
	// write (see handle); shutting down ends them first.
	return ops.Server{Addr: h.cfg.Addr, Handler: mux, Limits: h.cfg.HTTP, Ready: ready,
		OnShutdown: func() { close(h.closing) }}.Run(ctx)
}

func (h *hub) stop() {
	h.running.Store(false)
	if h.cc != nil {
		h.cc.Stop()
	}
}

func (h *hub) cors(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	switch {
	case slices.Contains(h.cfg.AllowedOrigins, "*"):
		w.Header().Set("Access-Control-Allow-Origin", "*")
	case origin != "" && slices.Contains(h.cfg.AllowedOrigins, origin):
		w.Header().Set("Access-Control-Allow-Origin", origin)
		w.Header().Add("Vary", "Origin")
	}
}

// refuse answers a request the relay will not stream, as Ably would.
func (h *hub) refuse(w http.ResponseWriter, err error) {
	e := realtime.ErrorFor(err)
	h.m.refused.WithLabelValues(strconv.Itoa(e.Code)).Inc()
	realtime.WriteError(w, e)
}

// handle serves one stream: it authorizes the request, registers the
// subscriber, sends what the client missed, then streams live.
func (h *hub) handle(w http.ResponseWriter, r *http.Request) {
	if !h.preflight(w, r) {
		return
	}
	now := h.cfg.Now()
	claims, refs, err := realtime.Authorize(accessToken(r), h.cfg.Realtime.Key, channels(r), now)
	if err != nil {
		h.refuse(w, err)
		return
	}
	s := &subscriber{refs: refs, phone: claims.PhoneID(), ch: make(chan frame, h.cfg.SubscriberBuffer), done: make(chan struct{})}
	h.add(s)
	defer h.remove(s)

	// Register first, then check and replay: whatever they miss is already
	// queued live, and whatever both see is sent once (by sequence).
	backlog, after, ok := h.catchUp(w, r, s)
	if !ok {
		return
	}
	out := openStream(w, after)
	if !out.begin(s, backlog) {
		return
	}
	h.live(r, s, out, claims.ExpiresAt.Sub(now))
}

// preflight sets the CORS headers and answers every method but GET; it
// reports whether the request goes on.
func (h *hub) preflight(w http.ResponseWriter, r *http.Request) bool {
	h.cors(w, r)
	switch r.Method {
	case http.MethodGet:
		return true
	case http.MethodOptions:
		w.Header().Set("Access-Control-Allow-Methods", "GET")
		w.Header().Set("Access-Control-Allow-Headers", "Last-Event-ID, Authorization")
		w.WriteHeader(http.StatusNoContent)
	default:
		realtime.WriteError(w, realtime.ErrorInfo{Code: realtime.CodeBadRequest, StatusCode: http.StatusMethodNotAllowed, Message: "GET only"})
	}
	return false
}

// channels is the request's comma-separated channels, blanks dropped.
func channels(r *http.Request) []string {
	var out []string
	for _, c := range strings.Split(r.URL.Query().Get("channels"), ",") {
		if c = strings.TrimSpace(c); c != "" {
			out = append(out, c)
		}
	}
	return out
}

// accessToken is the accessToken parameter, else the Bearer token.
func accessToken(r *http.Request) string {
	if token := r.URL.Query().Get("accessToken"); token != "" {
		return token
	}
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return token
}

// lastEvent is the id a reconnecting client resumes after: Last-Event-ID,
// else lastEvent; resume is false without a valid one.
func lastEvent(r *http.Request) (after uint64, resume bool) {
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("lastEvent")
	}
	if last == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(last, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}

// catchUp refuses a revoked stream and, for a resuming client, reads the
// events it missed and the position the stream continues from. ok is
// false when it has answered the request itself.
func (h *hub) catchUp(w http.ResponseWriter, r *http.Request, s *subscriber) (backlog []frame, after uint64, ok bool) {
	unavailable := func(err error) {
		h.log.Warn("relay.replay", "err", err)
		realtime.WriteError(w, realtime.ErrorInfo{Code: realtime.CodeInternal, StatusCode: http.StatusServiceUnavailable, Message: "stream unavailable"})
	}
	after, resume := lastEvent(r)
	if gone, err := h.revoked(r.Context(), s); err != nil {
		unavailable(err)
		return nil, 0, false
	} else if gone {
		h.refuse(w, realtime.ErrRevoked)
		return nil, 0, false
	}
	if !resume {
		return nil, after, true
	}
	h.m.resumes.Inc()
	backlog, after, err := h.replay(r.Context(), s, after)
	if err != nil {
		unavailable(err)
		return nil, 0, false
	}
	return backlog, after, true
}

// live streams s's queued events until the token expires, the stream is
// ended (too slow, revoked), the server shuts down or the client leaves.
func (h *hub) live(r *http.Request, s *subscriber, out *sseWriter, ttl time.Duration) {
	expiry := time.NewTimer(ttl)
	defer expiry.Stop()
	hb := time.NewTicker(h.cfg.Heartbeat)
	defer hb.Stop()
	for {
		select {
		case f := <-s.ch:
			if f.seq <= out.sent {
				continue
			}
			if !out.send(s, f) || !out.drain(s) || !out.flush() {
				return
			}
		case <-hb.C:
			if !out.write(realtime.Heartbeat) || !out.flush() {
				return
			}
		case <-expiry.C:
			out.end(realtime.ErrTokenExpired)
			return
		case <-s.done:
			if s.revoked.Load() {
				out.end(realtime.ErrRevoked)
			}
			return
		case <-h.closing:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// sseWriter writes one SSE response; sent is the last sequence written, so
// an event seen both in the replay and live is sent once. Each write and
// flush reports whether the client still takes the stream.
type sseWriter struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	sent uint64
}

// openStream sends the event-stream headers, lifting the server's
// deadlines (each write sets its own).
func openStream(w http.ResponseWriter, after uint64) *sseWriter {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: ops.StreamDeadlines(w), sent: after}
}

func (o *sseWriter) write(b []byte) bool {
	_ = o.rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := o.w.Write(b)
	return err == nil
}

func (o *sseWriter) flush() bool { return o.rc.Flush() == nil }

// begin sends a heartbeat and the backlog, then flushes.
func (o *sseWriter) begin(s *subscriber, backlog []frame) bool {
	if !o.write(realtime.Heartbeat) {
		return false
	}
	for _, f := range backlog {
		if !o.send(s, f) {
			return false
		}
	}
	return o.flush()
}

// send writes f unless it was already sent.
func (o *sseWriter) send(s *subscriber, f frame) bool {
	if f.seq <= o.sent {
		return true
	}
	if !o.write(s.encoded(f)) {
		return false
	}
	o.sent = f.seq
	return true
}

// drain sends what else is queued, so that one flush covers it all.
func (o *sseWriter) drain(s *subscriber) bool {
	for {
		select {
		case f := <-s.ch:
			if !o.send(s, f) {
				return false
			}
		default:
			return true
		}
	}
}

// end sends err as the stream's last event.
func (o *sseWriter) end(err error) {
	o.write(realtime.ErrorEvent(realtime.ErrorFor(err)))
	o.flush()
}
