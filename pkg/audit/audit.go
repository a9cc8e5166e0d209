// Package audit is the chain of custody of each photo: every step of its
// life (captured, uploaded, verified, cleaned, each coding change, deleted,
// each commit attempt and its outcome, its Media id) as an audit record,
// derived from the event stream and kept beyond the session as one
// append-only document per session in the bucket under audit/.
//
// A record never holds clinical text: a coding change names the fields
// that changed, never their values, and a consent record names how and
// for what, never the reason written for it.
package audit

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Step is what happened.
type Step string

// The steps of a session and of each photo in it.
const (
	SessionStarted  Step = "session_started"  // a capture session began for a patient and encounter
	PhonePaired     Step = "phone_paired"     // a phone scanned the QR code
	PhoneRemoved    Step = "phone_removed"    // the desktop removed a phone
	ConsentRecorded Step = "consent_recorded" // consent recorded or changed: how and for what
	Captured        Step = "captured"         // a photo was taken: source and device
	Uploaded        Step = "uploaded"         // its bytes are in the bucket: size and type
	Verified        Step = "verified"         // the server read every byte and it is an image: SHA-256 of the original
	Cleaned         Step = "cleaned"          // the clean copy (upright, no metadata) was made: SHA-1 of the bytes committed
	Rejected        Step = "rejected"         // it is not an acceptable image
	Coded           Step = "coded"            // a coding field changed: which, by whom
	Deleted         Step = "deleted"          // it was deleted from the session
	CommitRequested Step = "commit_requested" // the GP asked to commit
	CommitAttempt   Step = "commit_attempt"   // the committer began an attempt, or one failed and waits
	CommitPhoto     Step = "commit_photo"     // one photo's outcome: in_record (with its Media id and SHA-1), refused, unknown, ...
	CommitSucceeded Step = "commit_succeeded" // every photo is in the record
	CommitFailed    Step = "commit_failed"    // the commit ended without every photo in the record
)

// Record is one step. Version is the session's version after the change,
// which orders a session's records as the session saw them; ID is the
// event's id (and the record's index within it when one event gives
// several), by which a redelivered event is recognised.
type Record struct {
	ID          string       `json:"id"`
	EventID     string       `json:"eventId"`
	At          time.Time    `json:"at"`
	Version     int64        `json:"version"`
	SessionID   string       `json:"sessionId"`
	Step        Step         `json:"step"`
	ImageID     string       `json:"imageId,omitempty"`
	By          string       `json:"by,omitempty"`     // desktop | phone
	Source      string       `json:"source,omitempty"` // mobile | desktop (captured)
	Device      string       `json:"device,omitempty"`
	PhoneID     string       `json:"phoneId,omitempty"`
	PatientID   string       `json:"patientId,omitempty"`
	EncounterID string       `json:"encounterId,omitempty"`
	Bytes       int64        `json:"bytes,omitempty"`
	ContentType string       `json:"contentType,omitempty"`
	SHA256      string       `json:"sha256,omitempty"` // hex, of the bytes uploaded
	SHA1        string       `json:"sha1,omitempty"`   // base64, of the bytes committed (Media.content.hash)
	Fields      []string     `json:"fields,omitempty"`
	Purposes    []string     `json:"purposes,omitempty"`
	Method      string       `json:"method,omitempty"`
	CommitID    string       `json:"commitId,omitempty"`
	Attempt     int          `json:"attempt,omitempty"`
	Outcome     string       `json:"outcome,omitempty"`
	MediaID     string       `json:"mediaId,omitempty"`
	MediaIDs    []string     `json:"mediaIds,omitempty"`
	Detail      string       `json:"detail,omitempty"` // our own words: why refused, rejected or waiting
	Photos      []PhotoError `json:"photos,omitempty"` // commit_failed: the photos that stopped it
}

// PhotoError names a photo that stopped a commit and why.
type PhotoError struct {
	ImageID string `json:"imageId"`
	Error   string `json:"error"`
}

// ErrNotAudited means the event carries no session to file it under.
var ErrNotAudited = errors.New("event has no session")

var sessionIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidSessionID reports whether id can name a session's document.
func ValidSessionID(id string) bool { return sessionIDPattern.MatchString(id) }

// data is every field the audited events carry that a record uses. Notes
// are deliberately absent: decoding into it drops them.
type data struct {
	SessionID   string               `json:"sessionId"`
	Version     int64                `json:"version"`
	By          string               `json:"by"`
	PatientID   string               `json:"patientId"`
	EncounterID string               `json:"encounterId"`
	PhoneID     string               `json:"phoneId"`
	Image       *image               `json:"image"`
	ImageID     string               `json:"imageId"`
	Fields      []string             `json:"fields"`
	Consent     *consent             `json:"consent"`
	CommitID    string               `json:"commitId"`
	Total       int                  `json:"total"`
	Attempt     int                  `json:"attempt"`
	Waiting     *waiting             `json:"waiting"`
	State       string               `json:"state"`
	MediaID     string               `json:"mediaId"`
	Hash        string               `json:"hash"`
	Error       string               `json:"error"`
	MediaIDs    session.List[string] `json:"mediaResourceIds"`
	Errors      []PhotoError         `json:"errors"`
	Stopped     bool                 `json:"stopped"`
	Message     string               `json:"message"`
}

type image struct {
	ID             string    `json:"id"`
	Source         string    `json:"source"`
	Device         string    `json:"device"`
	CapturedAt     time.Time `json:"capturedAt"`
	ContentType    string    `json:"contentType"`
	Size           int64     `json:"size"`
	CleanSize      int64     `json:"cleanSize"`
	OriginalSHA256 string    `json:"originalSha256"`
	CleanSHA1      string    `json:"cleanSha1"`
	Width          int       `json:"width"`
	Height         int       `json:"height"`
	RejectReason   string    `json:"rejectReason"`
}

type consent struct {
	Method   string               `json:"method"`
	Purposes session.List[string] `json:"purposes"`
	Via      string               `json:"via"`
}

type waiting struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// FromEvent is the records ev gives, in order, and the session they
// belong to. An event that is not part of a photo's custody (a phone's
// pending count, the open patient) gives none.
func FromEvent(ev events.Event) ([]Record, error) {
	var d data
	if err := ev.DataAs(&d); err != nil {
		return nil, err
	}
	if !ValidSessionID(d.SessionID) {
		return nil, fmt.Errorf("%s %s: %w", ev.Type, ev.ID, ErrNotAudited)
	}
	base := Record{EventID: ev.ID, At: ev.Time.UTC(), Version: d.Version, SessionID: d.SessionID, By: d.By}
	out := records(ev.Type, base, d)
	for i := range out {
		out[i].ID = ev.ID
		if len(out) > 1 {
			out[i].ID = fmt.Sprintf("%s/%d", ev.ID, i)
		}
		out[i].Detail = clip(out[i].Detail)
	}
	return out, nil
}

// records is the steps one event of type t records, each from base.
func records(t events.Type, base Record, d data) []Record {
	switch t {
	case events.SessionStarted, events.PhonePaired, events.PhoneRemoved, events.ConsentRecorded:
		return sessionRecords(t, base, d)
	case events.ImageUploaded, events.ImageProcessed, events.ImageRejected, events.ImageUpdated, events.ImageRemoved:
		return imageRecords(t, base, d)
	case events.CommitRequested, events.CommitProgress, events.CommitSucceeded, events.CommitFailed:
		return commitRecords(t, base, d)
	}
	return nil
}

// sessionRecords records a session's start, its phones and its consent.
func sessionRecords(t events.Type, base Record, d data) []Record {
	r := base
	switch t {
	case events.SessionStarted:
		r.Step, r.PatientID, r.EncounterID = SessionStarted, d.PatientID, d.EncounterID
	case events.PhonePaired:
		r.Step, r.PhoneID = PhonePaired, d.PhoneID
		if r.By == "" {
			r.By = string(session.ActorPhone) // the phone pairs itself, with the QR code
		}
	case events.PhoneRemoved:
		r.Step, r.PhoneID = PhoneRemoved, d.PhoneID
	case events.ConsentRecorded:
		if d.Consent == nil {
			return nil
		}
		r.Step, r.Method, r.Purposes = ConsentRecorded, d.Consent.Method, orNil(d.Consent.Purposes)
		if r.By == "" {
			r.By = d.Consent.Via
		}
	}
	return []Record{r}
}

// imageRecords records a photo's capture, upload, checks, coding and
// deletion.
func imageRecords(t events.Type, base Record, d data) []Record {
	img := d.Image
	if img == nil {
		img = &image{}
	}
	r := base
	switch t {
	case events.ImageUploaded:
		r.Step, r.ImageID, r.Source, r.Device = Captured, img.ID, img.Source, img.Device
		if !img.CapturedAt.IsZero() {
			r.At = img.CapturedAt.UTC()
		}
		if r.By == "" && img.Source == "mobile" {
			r.By = string(session.ActorPhone)
		}
		up := base
		up.Step, up.ImageID, up.Bytes, up.ContentType = Uploaded, img.ID, img.Size, img.ContentType
		return []Record{r, up}
	case events.ImageProcessed:
		r.Step, r.ImageID, r.Bytes, r.ContentType, r.SHA256 = Verified, img.ID, img.Size, img.ContentType, img.OriginalSHA256
		clean := base
		clean.Step, clean.ImageID, clean.Bytes, clean.ContentType, clean.SHA1 = Cleaned, img.ID, img.CleanSize, "image/jpeg", img.CleanSHA1
		return []Record{r, clean}
	case events.ImageRejected:
		r.Step, r.ImageID, r.Detail = Rejected, img.ID, img.RejectReason
	case events.ImageUpdated:
		if len(d.Fields) == 0 {
			return nil // saved as it was: nothing changed
		}
		r.Step, r.ImageID, r.Fields = Coded, img.ID, d.Fields
	case events.ImageRemoved:
		r.Step, r.ImageID = Deleted, d.ImageID
	}
	return []Record{r}
}

// commitRecords records a commit's request, its attempts and photos, and
// its outcome.
func commitRecords(t events.Type, base Record, d data) []Record {
	r := base
	r.CommitID = d.CommitID
	switch t {
	case events.CommitRequested:
		r.Step, r.Attempt = CommitRequested, 0
	case events.CommitProgress:
		if d.ImageID == "" {
			r.Step, r.Attempt = CommitAttempt, d.Attempt
			r.Outcome = "started"
			if d.Waiting != nil {
				r.Outcome, r.Detail = "waiting", d.Waiting.Reason
			}
		} else {
			r.Step, r.ImageID, r.Outcome, r.MediaID, r.SHA1, r.Detail = CommitPhoto, d.ImageID, d.State, d.MediaID, d.Hash, d.Error
		}
	case events.CommitSucceeded:
		r.Step, r.Outcome, r.MediaIDs = CommitSucceeded, "committed", orNil(d.MediaIDs)
	case events.CommitFailed:
		r.Step, r.Outcome, r.Photos = CommitFailed, "failed", d.Errors
		if d.Stopped {
			r.Outcome = "stopped"
		}
	}
	return []Record{r}
}

// clip bounds a detail: our own explanation, kept short.
func clip(s string) string {
	if len(s) <= 300 {
		return s
	}
	return strings.ToValidUTF8(s[:300], "")
}

// orNil is l, or nil when empty, so a record reads back as it was written.
func orNil(l []string) []string {
	if len(l) == 0 {
		return nil
	}
	return l
}
