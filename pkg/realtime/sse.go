package realtime

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// The SSE stream, as Ably's /sse and the relay's built-in /sse both send it
// (one code path in the pages):
//
//	GET {url}?v=1.2&channels=session%3A<userId>&accessToken=<jwt>[&lastEvent=<id>]
//	    (a reconnecting EventSource also sends the header Last-Event-ID: <id>)
//
//	200 OK, Content-Type: text/event-stream
//
//	event: message
//	id: 42
//	data: {"id":"<eventId>","name":"image-uploaded","timestamp":1763870000000,"encoding":"json","channel":"session:u1","data":"{\"sessionId\":\"…\",\"version\":3,\"imageCount\":1,\"image\":{…}}"}
//
//	:
//
// `id:` is the stream position to resume from (opaque to the page: for the
// built-in relay it is the JetStream stream sequence, for Ably Ably's own);
// `data:` is one Message whose Data is the event payload as a JSON string
// (encoding "json": JSON.parse it); a line starting with ':' is a heartbeat
// sent about every 15 s. A refused request answers 400/401 with an Ably
// error body {"error":{"code","statusCode","message"}} (a channel outside
// the token's capability: 40160, status 401). When the token expires
// mid-stream the server sends
//
//	event: error
//	data: {"code":40142,"statusCode":401,"message":"access token expired"}
//
// and closes: the page fetches a new token and reopens with lastEvent. A
// phone's stream (a session's channel) ends the same way with 40141 once
// its session is replaced or the phone is removed; the token request that
// follows then fails with the API's reason.
// A server may also close a stream that cannot keep up; the page reopens
// with lastEvent and misses nothing.

// Message is the envelope of one SSE `message` event (Ably's enveloped
// format). Data holds the payload encoded as Encoding says ("json": a JSON
// document as a string).
type Message struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Timestamp int64  `json:"timestamp"`
	Encoding  string `json:"encoding,omitempty"`
	Channel   string `json:"channel"`
	Data      string `json:"data"`
}

// DecodeData unmarshals the payload into v, honouring Encoding "json" (and
// a plain JSON string when Encoding is empty).
func (m Message) DecodeData(v any) error {
	switch m.Encoding {
	case "json", "utf-8/json", "":
		return json.Unmarshal([]byte(m.Data), v)
	}
	return fmt.Errorf("decode message data: encoding %q", m.Encoding)
}

// Frame formats one SSE event: "event: <event>\nid: <id>\ndata: <data>\n\n".
// data must be one line (JSON from encoding/json is).
func Frame(event, id string, data []byte) []byte {
	b := make([]byte, 0, len(data)+len(event)+len(id)+24)
	b = append(b, "event: "...)
	b = append(b, event...)
	b = append(b, '\n')
	if id != "" {
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, '\n')
	}
	b = append(b, "data: "...)
	b = append(b, data...)
	return append(b, '\n', '\n')
}

// Heartbeat is the keep-alive comment line.
var Heartbeat = []byte(":\n\n")

// SubscribeURL is the URL a page opens: base (the realtime-token answer's
// url) with v=1.2, the channel, the token and, if not empty, lastEvent.
func SubscribeURL(base, channel, token, lastEvent string) string {
	q := url.Values{}
	q.Set("v", "1.2")
	q.Set("channels", channel)
	q.Set("accessToken", token)
	if lastEvent != "" {
		q.Set("lastEvent", lastEvent)
	}
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return base + sep + q.Encode()
}

// Event is one event read from an SSE stream.
type Event struct {
	Event string // "message" (default), "error", ...
	ID    string
	Data  string
}

// Message decodes a `message` event's data.
func (e Event) Message() (Message, error) {
	var m Message
	if err := json.Unmarshal([]byte(e.Data), &m); err != nil {
		return Message{}, fmt.Errorf("decode sse message: %w", err)
	}
	return m, nil
}

// Reader reads events from an SSE stream (tests, tools; browsers use
// EventSource). Comments are counted and skipped.
type Reader struct {
	sc       *bufio.Scanner
	Comments int
}

// NewReader reads from r.
func NewReader(r io.Reader) *Reader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	return &Reader{sc: sc}
}

// Next returns the next event, or io.EOF (or the read error) when the stream
// ends.
func (r *Reader) Next() (Event, error) {
	var ev Event
	var data []string
	seen := false
	for r.sc.Scan() {
		line := r.sc.Text()
		if line == "" {
			if !seen {
				continue
			}
			ev.Data = strings.Join(data, "\n")
			if ev.Event == "" {
				ev.Event = "message"
			}
			return ev, nil
		}
		if strings.HasPrefix(line, ":") {
			r.Comments++
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		seen = true
		switch field {
		case "event":
			ev.Event = value
		case "id":
			ev.ID = value
		case "data":
			data = append(data, value)
		}
	}
	if err := r.sc.Err(); err != nil {
		return Event{}, err
	}
	return Event{}, io.EOF
}

// Ably error codes used by the relay and the stand-in.
const (
	CodeBadRequest       = 40000
	CodeMessageTooLarge  = 40009
	CodeBadChannel       = 40010
	CodeBadMessageID     = 40031
	CodeBadCredentials   = 40101
	CodeTokenUnspecified = 40140
	CodeTokenRevoked     = 40141
	CodeTokenExpired     = 40142
	CodeTokenInvalid     = 40144
	CodeNotPermitted     = 40160
	CodeRateLimited      = 42910
	CodeInternal         = 50000
	CodeTimeout          = 50003
)

// ErrorInfo is Ably's error object, sent as {"error": ErrorInfo} in an HTTP
// body and bare as the data of an SSE `error` event.
type ErrorInfo struct {
	Code       int    `json:"code"`
	StatusCode int    `json:"statusCode"`
	Message    string `json:"message"`
}

func (e ErrorInfo) Error() string {
	return fmt.Sprintf("%s (code %d, status %d)", e.Message, e.Code, e.StatusCode)
}

// ErrorFor maps a token or channel error to Ably's code and status.
func ErrorFor(err error) ErrorInfo {
	var ei ErrorInfo
	switch {
	case errors.As(err, &ei):
		return ei
	case errors.Is(err, ErrNoToken):
		return ErrorInfo{CodeBadCredentials, http.StatusUnauthorized, "no access token"}
	case errors.Is(err, ErrTokenExpired):
		return ErrorInfo{CodeTokenExpired, http.StatusUnauthorized, "access token expired"}
	case errors.Is(err, ErrTokenInvalid):
		return ErrorInfo{CodeTokenInvalid, http.StatusUnauthorized, "access token invalid"}
	case errors.Is(err, ErrRevoked):
		return ErrorInfo{CodeTokenRevoked, http.StatusUnauthorized, "token revoked: the session ended or the phone was removed"}
	case errors.Is(err, ErrNotPermitted):
		// Ably answers 401 here, not 403; pages handle one behaviour.
		return ErrorInfo{CodeNotPermitted, http.StatusUnauthorized, "channel denied access based on given capability"}
	case errors.Is(err, ErrBadChannel):
		return ErrorInfo{CodeBadChannel, http.StatusBadRequest, "channels must be session channels"}
	}
	return ErrorInfo{CodeInternal, http.StatusInternalServerError, "internal error"}
}

// WriteError answers an HTTP request with e as Ably does.
func WriteError(w http.ResponseWriter, e ErrorInfo) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Ably-Errorcode", strconv.Itoa(e.Code))
	w.WriteHeader(e.StatusCode)
	_ = json.NewEncoder(w).Encode(struct {
		Error ErrorInfo `json:"error"`
	}{e})
}

// ErrorEvent is the SSE `error` event carrying e, sent before closing.
func ErrorEvent(e ErrorInfo) []byte {
	b, _ := json.Marshal(e)
	return Frame("error", "", b)
}

// ReadError decodes an Ably error body; ok is false when body is not one.
func ReadError(body []byte) (ErrorInfo, bool) {
	var v struct {
		Error *ErrorInfo `json:"error"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(body), &v); err != nil || v.Error == nil {
		return ErrorInfo{}, false
	}
	return *v.Error, true
}
