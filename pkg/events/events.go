// Package events is the contract between the services: the CloudEvents 1.0
// envelope every message travels in, the event types and their NATS subjects,
// the names the browsers see, and the one JetStream stream that carries them.
package events

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Type is an event type. Its value is both the CloudEvents `type` and the
// middle of the NATS subject: clinimg.<type>.<userId>.
type Type string

// The event types. Every change to a session produces one of them.
const (
	ImageUploaded   Type = "image.uploaded"   // a photo was recorded in a session
	ImageUpdated    Type = "image.updated"    // its metadata (body site, laterality, view, notes) changed
	ImageRemoved    Type = "image.removed"    // it was deleted from the session
	ImageProcessed  Type = "image.processed"  // previews and the clean copy are ready
	ImageRejected   Type = "image.rejected"   // the thumbnailer refused it (not an image, too big, corrupt)
	SessionStarted  Type = "session.started"  // a capture session began for a patient
	PhonePaired     Type = "session.paired"   // a phone exchanged the QR token
	PhonePending    Type = "session.pending"  // a phone's count of photos it holds unrecorded changed
	PhoneRemoved    Type = "session.unpaired" // the desktop removed a paired phone
	PatientOpened   Type = "session.opened"   // the desktop said which patient the practice system has open
	ConsentRecorded Type = "session.consent"  // the patient's consent was recorded or changed
	CommitRequested Type = "commit.requested" // the GP asked to commit; the committer's work item
	CommitProgress  Type = "commit.progress"  // one more photo landed in ALEX
	CommitSucceeded Type = "commit.succeeded" // every photo landed
	CommitFailed    Type = "commit.failed"    // the commit stopped; nothing is left half-written
)

// Types lists every event type, in a stable order.
var Types = []Type{
	ImageUploaded, ImageUpdated, ImageRemoved, ImageProcessed, ImageRejected,
	SessionStarted, PhonePaired, PhonePending, PhoneRemoved, PatientOpened, ConsentRecorded, CommitRequested, CommitProgress, CommitSucceeded, CommitFailed,
}

// BrowserName is the name a screen receives the event under (Ably message
// name or SSE data name). The seeds' `image-uploaded` and `session-committed`
// are kept; an empty name means the event is not for browsers.
func (t Type) BrowserName() string {
	switch t {
	case ImageUploaded:
		return "image-uploaded"
	case ImageUpdated:
		return "image-updated"
	case ImageRemoved:
		return "image-removed"
	case ImageProcessed:
		return "image-processed"
	case ImageRejected:
		return "image-rejected"
	case SessionStarted:
		return "session-started"
	case PhonePaired:
		return "phone-paired"
	case PhonePending:
		return "phone-pending"
	case PhoneRemoved:
		return "phone-removed"
	case PatientOpened:
		return "patient-opened"
	case ConsentRecorded:
		return "consent-recorded"
	case CommitRequested:
		return "commit-started"
	case CommitProgress:
		return "commit-progress"
	case CommitSucceeded:
		return "session-committed"
	case CommitFailed:
		return "commit-failed"
	}
	return ""
}

// SpecVersion is the CloudEvents version of every envelope.
const SpecVersion = "1.0"

// Event is a CloudEvents 1.0 JSON envelope. ID is also the JetStream
// Nats-Msg-Id, so a republished event is dropped by the stream's dedupe.
// Subject is the user id the event concerns.
type Event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            Type            `json:"type"`
	Time            time.Time       `json:"time"`
	Subject         string          `json:"subject"`
	DataContentType string          `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
	// TraceParent is the W3C trace context of the request that caused the
	// event (CloudEvents distributed-tracing extension).
	TraceParent string `json:"traceparent,omitempty"`
}

// New builds an event of type t about userID with data marshalled as JSON.
// The id is random; use NewWithID where a retry must produce the same id.
func New(source string, t Type, userID string, data any, now time.Time) (Event, error) {
	return NewWithID(NewID(), source, t, userID, data, now)
}

// NewWithID builds an event with a caller-chosen id, for producers that must
// emit the same event again after a crash (the stream drops the repeat).
func NewWithID(id, source string, t Type, userID string, data any, now time.Time) (Event, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("encode %s data: %w", t, err)
	}
	return Event{
		SpecVersion:     SpecVersion,
		ID:              id,
		Source:          source,
		Type:            t,
		Time:            now.UTC(),
		Subject:         userID,
		DataContentType: "application/json",
		Data:            raw,
	}, nil
}

// NewID returns a random 128-bit event id in hex.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Decode parses an envelope and checks the fields every consumer relies on.
func Decode(raw []byte) (Event, error) {
	var ev Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	switch {
	case ev.SpecVersion != SpecVersion:
		return Event{}, fmt.Errorf("decode event: specversion %q", ev.SpecVersion)
	case ev.ID == "":
		return Event{}, errors.New("decode event: missing id")
	case !ValidUserID(ev.Subject):
		return Event{}, errors.New("decode event: bad subject")
	}
	return ev, nil
}

// DataAs decodes the event's data into v.
func (e Event) DataAs(v any) error {
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("decode %s data: %w", e.Type, err)
	}
	return nil
}

var userIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidUserID reports whether id can be a user id: 1-64 letters, digits,
// '_' or '-'. User ids end NATS subjects and Redis keys, so nothing else is
// allowed in them.
func ValidUserID(id string) bool { return userIDPattern.MatchString(id) }

// Names are the stream and subject prefix, configurable so tests sharing one
// NATS server do not collide. The zero value is not usable: start from
// DefaultNames.
type Names struct {
	Stream string // JetStream stream name, default CLINIMG
	Prefix string // first subject token(s), default clinimg
}

// DefaultNames is what production uses: stream CLINIMG on subjects clinimg.>.
var DefaultNames = Names{Stream: "CLINIMG", Prefix: "clinimg"}

// Subject is the NATS subject of an event of type t for userID.
func (n Names) Subject(t Type, userID string) string {
	return n.Prefix + "." + string(t) + "." + userID
}

// SubjectOf is the subject of ev.
func (n Names) SubjectOf(ev Event) string { return n.Subject(ev.Type, ev.Subject) }

// Filter is the subject filter for every event of type t (any user).
func (n Names) Filter(t Type) string { return n.Prefix + "." + string(t) + ".*" }

// All is the filter for every event of the stream.
func (n Names) All() string { return n.Prefix + ".>" }

// Parse splits a subject back into its type and user id.
func (n Names) Parse(subject string) (Type, string, bool) {
	rest, ok := strings.CutPrefix(subject, n.Prefix+".")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 {
		return "", "", false
	}
	return Type(rest[:i]), rest[i+1:], true
}

func jsonMarshal(ev Event) ([]byte, error) {
	raw, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return raw, nil
}
