package ablysim

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clinicalimages/clinimg/pkg/realtime"
)

// subscriber is one open SSE stream.
type subscriber struct {
	ch   chan Message
	once sync.Once
	done chan struct{}
}

func (s *subscriber) send(m Message) {
	select {
	case s.ch <- m:
	default:
		s.close() // too slow: the client reconnects with lastEvent
	}
}

func (s *subscriber) close() { s.once.Do(func() { close(s.done) }) }

// sse serves GET /sse?v=1.2&channels=a,b&accessToken=<jwt>[&lastEvent=<serial>]
// as Ably does: the token must be signed by one of the keys, current, and
// allow subscribe on every channel.
func (s *Server) sse(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	channels := splitChannels(q.Get("channels"))
	token := q.Get("accessToken")
	if token == "" {
		token, _ = strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	}
	claims, err := s.authorize(token, channels)
	if err != nil {
		e := realtime.ErrorFor(err)
		s.count(e.Code)
		realtime.WriteError(w, e)
		return
	}
	last := q.Get("lastEvent")
	if last == "" {
		last = r.Header.Get("Last-Event-ID")
	}
	after, _ := strconv.ParseInt(last, 10, 64)

	sub, backlog, unsubscribe := s.subscribe(channels, last != "", after)
	defer unsubscribe()

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	w.WriteHeader(http.StatusOK)
	flush := func() {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	write := func(m Message) bool {
		b, _ := json.Marshal(realtime.Message{ID: m.ID, Name: m.Name, Timestamp: m.Timestamp,
			Encoding: m.Encoding, Channel: m.Channel, Data: m.Data})
		_, err := w.Write(realtime.Frame("message", strconv.FormatInt(m.Serial, 10), b))
		return err == nil
	}
	_, _ = w.Write(realtime.Heartbeat)
	for _, m := range backlog {
		if !write(m) {
			return
		}
	}
	flush()

	expiry := time.NewTimer(claims.ExpiresAt.Sub(s.opt.Now()))
	defer expiry.Stop()
	hb := time.NewTicker(s.opt.Heartbeat)
	defer hb.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-sub.done:
			return
		case <-expiry.C:
			_, _ = w.Write(realtime.ErrorEvent(realtime.ErrorFor(realtime.ErrTokenExpired)))
			flush()
			return
		case <-hb.C:
			if _, err := w.Write(realtime.Heartbeat); err != nil {
				return
			}
			flush()
		case m := <-sub.ch:
			if m.Serial <= after {
				continue
			}
			if !write(m) {
				return
			}
			flush()
		}
	}
}

// authorize tries the token against each key: the one named by its kid
// decides.
func (s *Server) authorize(token string, channels []string) (realtime.Claims, error) {
	var last error = realtime.ErrTokenInvalid
	for _, k := range s.opt.Keys {
		c, _, err := realtime.Authorize(token, k, channels, s.opt.Now())
		if err == nil {
			return c, nil
		}
		last = err
		if !errors.Is(err, realtime.ErrTokenInvalid) {
			return realtime.Claims{}, err
		}
	}
	return realtime.Claims{}, last
}

func splitChannels(v string) []string {
	var out []string
	for _, c := range strings.Split(v, ",") {
		if c = strings.TrimSpace(c); c != "" {
			out = append(out, c)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// subscribe adds a subscriber to channels and, when resuming, returns the
// kept messages after serial after, both under one lock so none is missed
// or sent twice. The caller calls unsubscribe.
func (s *Server) subscribe(channels []string, resume bool, after int64) (sub *subscriber, backlog []Message, unsubscribe func()) {
	sub = &subscriber{ch: make(chan Message, 1024), done: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	if resume {
		for _, m := range s.messages {
			if m.Serial > after && contains(channels, m.Channel) {
				backlog = append(backlog, m)
			}
		}
	}
	for _, ch := range channels {
		if s.subs[ch] == nil {
			s.subs[ch] = map[*subscriber]struct{}{}
		}
		s.subs[ch][sub] = struct{}{}
	}
	return sub, backlog, func() {
		s.mu.Lock()
		for _, ch := range channels {
			delete(s.subs[ch], sub)
		}
		s.mu.Unlock()
	}
}
