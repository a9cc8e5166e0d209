// Package session is the capture session: its model (the seeds' Session,
// Image and ImageMetadata, extended), and a Redis store whose every change is
// one atomic Lua step that also appends the resulting event to an outbox.
package session

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// CommitStatus is where a session is in its commit. The seeds' three values.
type CommitStatus string

// Commit states. none -> in_progress -> committed, or back to none on failure.
const (
	CommitNone       CommitStatus = "none"
	CommitInProgress CommitStatus = "in_progress"
	CommitCommitted  CommitStatus = "committed"
)

// ImageStatus is where one photo is in its life.
type ImageStatus string

// Image states, as the desktop grid shows them.
const (
	ImageProcessing ImageStatus = "processing" // recorded; previews not made yet
	ImageReady      ImageStatus = "ready"      // previews and clean copy made
	ImageRejected   ImageStatus = "rejected"   // not an acceptable image; cannot be committed
	ImageCommitted  ImageStatus = "committed"  // written to ALEX
	ImageFailed     ImageStatus = "failed"     // the last commit failed on this photo
)

// MaxImages is the seeds' cap of photos per session; WarnImages is where the
// screens start suggesting a commit.
const (
	MaxImages  = 50
	WarnImages = 20
)

// MaxNotes is the longest note on one photo, in characters.
const MaxNotes = 2000

// CapMessage is what a GP reads when a session holds max photos: the one
// wording of the seeds' "Maximum 50 images reached", for the API's error and
// both screens.
func CapMessage(max int) string {
	return fmt.Sprintf("Maximum %d photos reached. Please commit before adding more.", max)
}

// Session is what `user:{userId}` holds. The seeds' fields keep their names;
// the rest is what the promises need.
type Session struct {
	SessionID    string        `json:"sessionId"`
	UserID       string        `json:"userId"`
	PatientID    string        `json:"patientId"`
	EncounterID  string        `json:"encounterId"`
	Images       List[Image]   `json:"images"`
	CommitStatus CommitStatus  `json:"commitStatus"`
	CommitID     string        `json:"commitId,omitempty"`
	Commit       *CommitResult `json:"commit,omitempty"`
	Phone        *Phone        `json:"phone,omitempty"`
	// Pending is what each phone still holds and has not recorded yet
	// (photos waiting for a connection), by phone id (PhoneID).
	Pending      map[string]Pending `json:"pending,omitempty"`
	Version      int64              `json:"version"`
	CreatedAt    time.Time          `json:"createdAt"`
	LastActivity time.Time          `json:"lastActivity"`
}

// Uncommitted is the number of photos that would be lost if the session were
// replaced.
func (s Session) Uncommitted() int {
	if s.CommitStatus == CommitCommitted {
		return 0
	}
	return len(s.Images)
}

// PendingPhotos is how many photos the phones say they still hold.
func (s Session) PendingPhotos() int {
	n := 0
	for _, p := range s.Pending {
		n += p.Count
	}
	return n
}

// Image finds a photo by id.
func (s Session) Image(id string) (Image, bool) {
	for _, im := range s.Images {
		if im.ID == id {
			return im, true
		}
	}
	return Image{}, false
}

// Image is one photo of a session. S3URL, PreviewURL and ViewerURL are
// short-lived presigned GET URLs the API fills in on read; they are never
// stored.
type Image struct {
	ID          string      `json:"id"`
	S3Key       string      `json:"s3Key"`
	S3URL       string      `json:"s3Url,omitempty"`
	Uploaded    bool        `json:"uploaded"`
	Source      string      `json:"source"`
	CapturedAt  time.Time   `json:"capturedAt"`
	Metadata    Metadata    `json:"metadata"`
	ContentType string      `json:"contentType"`
	Size        int64       `json:"size"`
	Status      ImageStatus `json:"status"`
	Version     int64       `json:"version"`

	// Set by the thumbnailer.
	PreviewKey   string `json:"previewKey,omitempty"`
	ViewerKey    string `json:"viewerKey,omitempty"`
	CleanKey     string `json:"cleanKey,omitempty"`
	CleanSize    int64  `json:"cleanSize,omitempty"`
	SHA256       string `json:"sha256,omitempty"`
	Width        int    `json:"width,omitempty"`
	Height       int    `json:"height,omitempty"`
	RejectReason string `json:"rejectReason,omitempty"`
	PreviewURL   string `json:"previewUrl,omitempty"`
	ViewerURL    string `json:"viewerUrl,omitempty"`

	// Set by the committer.
	MediaID string `json:"mediaId,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Metadata is the GP's coding of one photo. BodySite is a SNOMED CT code;
// BodySiteDisplay its display text.
type Metadata struct {
	BodySite        string `json:"bodySite"`
	BodySiteDisplay string `json:"bodySiteDisplay,omitempty"`
	Laterality      string `json:"laterality,omitempty"` // left | right | bilateral
	ViewType        string `json:"viewType,omitempty"`   // anterior | posterior | lateral | medial
	Notes           string `json:"notes,omitempty"`
}

// CommitResult is the outcome of the last commit, kept on the session so a
// screen that reconnects sees it.
type CommitResult struct {
	CommitID         string       `json:"commitId"`
	RequestedAt      time.Time    `json:"requestedAt"`
	FinishedAt       *time.Time   `json:"finishedAt,omitempty"`
	Done             int          `json:"done"`
	Total            int          `json:"total"`
	Success          bool         `json:"success"`
	MediaResourceIDs List[string] `json:"mediaResourceIds"`
	Message          string       `json:"message,omitempty"`
	// Orphans lists Media that a failed commit wrote and could not remove,
	// for manual clean-up.
	Orphans List[string] `json:"orphans,omitempty"`
}

// Phone is the phone paired with the session through its QR token.
type Phone struct {
	PairedAt  time.Time `json:"pairedAt"`
	UserAgent string    `json:"userAgent,omitempty"`
}

// Pending is one phone's report of the photos it holds that the session
// has not recorded yet.
type Pending struct {
	Count     int       `json:"count"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// SessionToken is what `session-token:{token}` holds: the seeds' fields plus
// the session it opens and whether a phone already used it.
type SessionToken struct {
	UserID      string    `json:"userId"`
	PatientID   string    `json:"patientId"`
	EncounterID string    `json:"encounterId"`
	SessionID   string    `json:"sessionId"`
	CreatedAt   time.Time `json:"createdAt"`
	Used        bool      `json:"used,omitempty"`
}

// PhoneCredential is what a phone holds after exchanging its QR token: access
// to one user's one session, ending with it.
type PhoneCredential struct {
	UserID    string `json:"userId"`
	SessionID string `json:"sessionId"`
}

// List is a JSON array that also reads Redis cjson's encoding of an empty
// array ({}), and always writes [] rather than null.
type List[T any] []T

// UnmarshalJSON accepts an array, null or {}.
func (l *List[T]) UnmarshalJSON(b []byte) error {
	t := bytes.TrimSpace(b)
	if bytes.Equal(t, []byte("{}")) || bytes.Equal(t, []byte("null")) {
		*l = List[T]{}
		return nil
	}
	var s []T
	if err := json.Unmarshal(t, &s); err != nil {
		return err
	}
	*l = s
	return nil
}

// MarshalJSON writes [] for an empty list.
func (l List[T]) MarshalJSON() ([]byte, error) {
	if len(l) == 0 {
		return []byte("[]"), nil
	}
	return json.Marshal([]T(l))
}

// Event payloads. Each carries the session version after the change so a
// screen can apply it idempotently and notice a gap.

// ImageEvent is the data of image.uploaded, image.updated, image.processed and
// image.rejected.
type ImageEvent struct {
	SessionID  string `json:"sessionId"`
	Version    int64  `json:"version"`
	ImageCount int    `json:"imageCount"`
	Image      Image  `json:"image"`
}

// ImageRemovedEvent is the data of image.removed.
type ImageRemovedEvent struct {
	SessionID  string `json:"sessionId"`
	Version    int64  `json:"version"`
	ImageCount int    `json:"imageCount"`
	ImageID    string `json:"imageId"`
}

// SessionEvent is the data of session.started and session.paired.
type SessionEvent struct {
	SessionID   string `json:"sessionId"`
	Version     int64  `json:"version"`
	PatientID   string `json:"patientId"`
	EncounterID string `json:"encounterId"`
	ImageCount  int    `json:"imageCount"`
}

// PendingEvent is the data of session.pending: one phone's count changed.
// Pending is absent when no phone holds anything.
type PendingEvent struct {
	SessionID     string             `json:"sessionId"`
	Version       int64              `json:"version"`
	ImageCount    int                `json:"imageCount"`
	Pending       map[string]Pending `json:"pending,omitempty"`
	PendingPhotos int                `json:"pendingPhotos"`
}

// CommitEvent is the data of commit.requested, commit.progress,
// commit.succeeded and commit.failed.
type CommitEvent struct {
	SessionID        string       `json:"sessionId"`
	Version          int64        `json:"version"`
	CommitID         string       `json:"commitId"`
	Done             int          `json:"done"`
	Total            int          `json:"total"`
	Success          bool         `json:"success"`
	ImageCount       int          `json:"imageCount"`
	MediaResourceIDs List[string] `json:"mediaResourceIds"`
	Message          string       `json:"message,omitempty"`
	Errors           []ImageError `json:"errors,omitempty"`
	Orphans          List[string] `json:"orphans,omitempty"`
	ImageID          string       `json:"imageId,omitempty"`
	MediaID          string       `json:"mediaId,omitempty"`
}

// ImageError is why one photo stopped a commit.
type ImageError struct {
	ImageID string `json:"imageId"`
	Error   string `json:"error"`
}
