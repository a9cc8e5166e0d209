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
	ImageCommitted  ImageStatus = "committed"  // in the patient record (commitState in_record)
	ImageFailed     ImageStatus = "failed"     // the last commit stopped on this photo (refused, conflict, needs checking)
)

// PhotoState is where one photo stands in reaching the patient's record. It
// is the commit's ledger: kept on the session until the session is
// committed or discarded, never cleared by a failure, so a later commit
// writes only what is not in the record yet.
type PhotoState string

// Photo states. "" reads as pending (sessions recorded before states).
//
//	pending --POST--> in_record | refused | unknown
//	unknown --lookup--> in_record | pending | needs_checking | conflict
const (
	PhotoPending       PhotoState = "pending"        // not in the record; safe to send
	PhotoSending       PhotoState = "sending"        // a write is on its way (unknown once the commit stops)
	PhotoInRecord      PhotoState = "in_record"      // ALEX holds it as Media mediaId
	PhotoRefused       PhotoState = "refused"        // ALEX refused it and stored nothing (error says why); fix or delete it
	PhotoUnknown       PhotoState = "unknown"        // a write's outcome is unknown; looked up before anything is sent again
	PhotoNeedsChecking PhotoState = "needs_checking" // cannot be looked up; the GP checks the record, then resends or deletes it
	PhotoConflict      PhotoState = "conflict"       // ALEX holds another Media under this photo's identifier; never claimed
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
	Phone        *Phone        `json:"phone,omitempty"` // the phone paired last of Phones
	Phones       List[Phone]   `json:"phones"`          // every phone paired and not removed
	// OpenPatientID is the patient the practice system has open, as the
	// desktop last said, when it is not this session's: then nothing is added
	// to the session, from the desktop or a phone (ErrPatientMismatch).
	OpenPatientID string `json:"openPatientId,omitempty"`
	// Held is true while OpenPatientID is set: what a phone is shown (it is
	// not told the other patient's id).
	Held bool `json:"held,omitempty"`
	// Pending is what each phone still holds and has not recorded yet
	// (photos waiting for a connection), by phone id (PhoneID).
	Pending map[string]Pending `json:"pending,omitempty"`
	// Consent is the patient's consent to the photos, once recorded.
	Consent      *Consent  `json:"consent,omitempty"`
	Version      int64     `json:"version"`
	CreatedAt    time.Time `json:"createdAt"`
	LastActivity time.Time `json:"lastActivity"`
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
	// Device is a short summary of the device that recorded the photo (its
	// browser and system, from the user agent), for the audit trail.
	Device string `json:"device,omitempty"`

	// Set by the thumbnailer.
	PreviewKey string `json:"previewKey,omitempty"`
	ViewerKey  string `json:"viewerKey,omitempty"`
	CleanKey   string `json:"cleanKey,omitempty"`
	CleanSize  int64  `json:"cleanSize,omitempty"`
	SHA256     string `json:"sha256,omitempty"` // of the clean copy, hex
	// OriginalSHA256 is the SHA-256 (hex) of the bytes uploaded, as the
	// thumbnailer read them; CleanSHA1 the SHA-1 (base64, as
	// Media.content.hash) of the clean copy, the bytes committed.
	OriginalSHA256 string `json:"originalSha256,omitempty"`
	CleanSHA1      string `json:"cleanSha1,omitempty"`
	Width          int    `json:"width,omitempty"`
	Height         int    `json:"height,omitempty"`
	RejectReason   string `json:"rejectReason,omitempty"`
	PreviewURL     string `json:"previewUrl,omitempty"`
	ViewerURL      string `json:"viewerUrl,omitempty"`

	// MediaIdentifier is the value of the Media.identifier this photo is
	// written under: the server's, set when the photo is recorded and never
	// taken from the client, so no two photos ever share one.
	MediaIdentifier string `json:"mediaIdentifier,omitempty"`

	// Set by the committer: the photo's ledger entry.
	CommitState PhotoState `json:"commitState,omitempty"`
	MediaID     string     `json:"mediaId,omitempty"` // set once in_record
	Error       string     `json:"error,omitempty"`   // why it is refused, unknown, needs checking or in conflict
	// SentHashes are the SHA-1s (base64) of every body sent under
	// MediaIdentifier: a Media found later is this photo's only if its
	// content.hash is one of them.
	SentHashes List[string] `json:"sentHashes,omitempty"`
	// Tries counts writes begun; a committer changes a photo's state only
	// from the count it saw, so a late answer never undoes a newer write.
	Tries int `json:"tries,omitempty"`
	// SentAt is when the last write of the photo began. A write whose
	// answer was lost may still land until ALEX_REQUEST_TIMEOUT after it,
	// so until then a lookup that finds nothing is not yet the truth.
	SentAt *time.Time `json:"sentAt,omitempty"`
}

// State is the photo's commit state, pending when none is recorded.
func (im Image) State() PhotoState {
	if im.CommitState == "" {
		return PhotoPending
	}
	return im.CommitState
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
	// Attempt is how many attempts the committer has begun.
	Attempt int `json:"attempt,omitempty"`
	// Waiting is set while the commit waits to try again after ALEX failed:
	// what both screens show of a stuck commit.
	Waiting *CommitWait `json:"waiting,omitempty"`
	// Stopped is true when the GP stopped waiting for this commit.
	Stopped bool `json:"stopped,omitempty"`
}

// Reasons a commit waits to try again.
const (
	WaitALEXUnavailable = "alex_unavailable" // 5xx, timeouts, connections refused or reset
	WaitALEXThrottled   = "alex_throttled"   // 429 (Retry-After honoured)
	WaitALEXUnclear     = "alex_unclear"     // an answer that does not say whether the photo was stored
	WaitALEXSlow        = "alex_slow"        // an attempt still runs: ALEX is slow to answer (nextTryAt: when we stop waiting for it)
	WaitInternal        = "internal"         // our own storage (S3, Redis) failed
)

// CommitWait is why a commit is waiting and when it tries again.
type CommitWait struct {
	Reason    string    `json:"reason"`    // one of the Wait* codes
	Message   string    `json:"message"`   // what the GP reads, e.g. "ALEX is unavailable (503)"
	Attempt   int       `json:"attempt"`   // the attempt that failed
	NextTryAt time.Time `json:"nextTryAt"` // when the next attempt starts
	GiveUpAt  time.Time `json:"giveUpAt"`  // when the retry budget (COMMIT_RETRY_BUDGET) runs out
}

// Phone is a phone paired with the session through a QR token. ID names it
// in GET/DELETE /api/users/:userId/phones and in its realtime token.
type Phone struct {
	ID        string    `json:"id"`
	PairedAt  time.Time `json:"pairedAt"`
	UserAgent string    `json:"userAgent,omitempty"`
}

// Pending is one phone's report of the photos it holds that the session
// has not recorded yet.
type Pending struct {
	Count     int       `json:"count"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// PhoneByID finds a paired phone.
func (s Session) PhoneByID(id string) (Phone, bool) {
	for _, p := range s.Phones {
		if p.ID == id {
			return p, true
		}
	}
	return Phone{}, false
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
// to one user's one session, ending with it or when the desktop removes the
// phone.
type PhoneCredential struct {
	UserID    string `json:"userId"`
	SessionID string `json:"sessionId"`
	PhoneID   string `json:"phoneId"`
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
	// Fields names the metadata fields an image.updated changed (never
	// their values).
	Fields List[string] `json:"fields,omitempty"`
	// By is who made the change (ActorDesktop, ActorPhone), when known.
	By Actor `json:"by,omitempty"`
}

// ImageRemovedEvent is the data of image.removed.
type ImageRemovedEvent struct {
	SessionID  string `json:"sessionId"`
	Version    int64  `json:"version"`
	ImageCount int    `json:"imageCount"`
	ImageID    string `json:"imageId"`
	By         Actor  `json:"by,omitempty"`
}

// SessionEvent is the data of session.started, session.paired and
// session.unpaired. PreviousSessionID (session.started) is the session this
// one replaced, whose phones lose their stream; PhoneID (paired, unpaired)
// is the phone concerned.
type SessionEvent struct {
	SessionID         string `json:"sessionId"`
	Version           int64  `json:"version"`
	PatientID         string `json:"patientId"`
	EncounterID       string `json:"encounterId"`
	ImageCount        int    `json:"imageCount"`
	PreviousSessionID string `json:"previousSessionId,omitempty"`
	PhoneID           string `json:"phoneId,omitempty"`
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
	// State and Error are imageId's new commit state (commit.progress).
	State PhotoState `json:"state,omitempty"`
	Error string     `json:"error,omitempty"`
	// Hash is the SHA-1 (base64) of the bytes in the record, with state
	// in_record when the committer knows it.
	Hash string `json:"hash,omitempty"`
	// Attempt and Waiting follow a commit that is retrying
	// (commit.progress); Waiting is absent while an attempt runs.
	Attempt int         `json:"attempt,omitempty"`
	Waiting *CommitWait `json:"waiting,omitempty"`
	// Stopped marks the commit.failed of a commit the GP stopped waiting for.
	Stopped bool `json:"stopped,omitempty"`
}

// ImageError is why one photo stopped a commit.
type ImageError struct {
	ImageID string `json:"imageId"`
	Error   string `json:"error"`
}
