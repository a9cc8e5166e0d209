package api

import (
	"time"

	"github.com/clinicalimages/clinimg/pkg/audit"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// The API's JSON answers, one type each, named for what they answer. Every
// field is always sent (null when its value is), unless its tag says
// omitempty; openapi.json documents each (TestAnswersMatchTheSchemas).

// errorAnswer is every error: a stable code for programs, a message for
// people, and for some errors a count.
type errorAnswer struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// Count is how many photos an uncommitted_images or rejected_images
	// error is about.
	Count *int `json:"count,omitempty"`
}

// healthAnswer is GET /healthz's.
type healthAnswer struct {
	Status string `json:"status"`
}

// startAnswer is POST /api/session-tokens': the QR code for a phone.
type startAnswer struct {
	SessionToken string    `json:"sessionToken"`
	UserID       string    `json:"userId"`
	ExpiresAt    time.Time `json:"expiresAt"`
	QRCodeURL    string    `json:"qrCodeUrl"`
	QRCodeImage  string    `json:"qrCodeImage"`
	SessionID    string    `json:"sessionId"`
	Reused       bool      `json:"reused"`
}

// exchangeAnswer is GET /api/session-tokens/:token's: the phone's
// credential for the session.
type exchangeAnswer struct {
	Valid       bool      `json:"valid"`
	UserID      string    `json:"userId"`
	PatientID   string    `json:"patientId"`
	EncounterID string    `json:"encounterId"`
	SessionID   string    `json:"sessionId"`
	PhoneID     string    `json:"phoneId"`
	PhoneToken  string    `json:"phoneToken"`
	ExpiresAt   time.Time `json:"expiresAt"`
}

// exchangeErrorAnswer is the same route's errors, which say valid: false.
type exchangeErrorAnswer struct {
	Valid bool   `json:"valid"`
	Error string `json:"error"`
	Code  string `json:"code"`
}

// presignAnswer is POST presigned-url's: where and how to PUT the photo.
type presignAnswer struct {
	UploadURL string        `json:"uploadUrl"`
	S3Key     string        `json:"s3Key"`
	ExpiresIn int           `json:"expiresIn"`
	ImageID   string        `json:"imageId"`
	Headers   uploadHeaders `json:"headers"`
}

// uploadHeaders are the headers signed into an upload URL.
type uploadHeaders struct {
	ContentType string `json:"Content-Type"`
}

// sessionView is a session as the API answers it (Server.view). Its
// photos and phones are plain slices, never nil, over the session's Lists:
// encoding/json validates and compacts again whatever a MarshalJSON writes,
// which for the photos, with their three URLs each, was about a third of
// the cost of encoding a session's answer.
type sessionView struct {
	session.Session
	Images []session.Image `json:"images"` // the same photos as Session.Images
	Phones []session.Phone `json:"phones"`
}

// recordAnswer is POST images': the photo recorded (or already there).
type recordAnswer struct {
	Success bool        `json:"success"`
	ImageID string      `json:"imageId"`
	Session sessionView `json:"session"`
}

// updateAnswer is PATCH images/:imageId's.
type updateAnswer struct {
	Success bool          `json:"success"`
	Image   session.Image `json:"image"`
	Session sessionView   `json:"session"`
}

// deleteAnswer is DELETE images/:imageId's.
type deleteAnswer struct {
	Success bool   `json:"success"`
	ImageID string `json:"imageId"`
}

// openPatientAnswer is PUT open-patient's.
type openPatientAnswer struct {
	PatientID string `json:"patientId"`
	Held      bool   `json:"held"`
	Version   int64  `json:"version"`
}

// pendingAnswer is PUT pending's.
type pendingAnswer struct {
	Pending       int   `json:"pending"`
	PendingPhotos int   `json:"pendingPhotos"`
	Version       int64 `json:"version"`
}

// consentAnswer is PUT consent's.
type consentAnswer struct {
	Consent *session.Consent `json:"consent"`
	Version int64            `json:"version"`
}

// commitAcceptedAnswer is POST commit's 202: the commit goes on; follow
// it at GET commit.
type commitAcceptedAnswer struct {
	Success    bool   `json:"success"`
	Status     string `json:"status"`
	CommitID   string `json:"commitId"`
	ImageCount int    `json:"imageCount"`
	Message    string `json:"message"`
}

// commitAnswer is POST commit's 200: every photo is in the record.
type commitAnswer struct {
	Success          bool                 `json:"success"`
	MediaResourceIDs session.List[string] `json:"mediaResourceIds"`
	Message          string               `json:"message"`
	ImageCount       int                  `json:"imageCount"`
	CommitID         string               `json:"commitId"`
}

// commitFailedAnswer is POST commit's 502. ALEX has no delete, so
// partialSuccess and inRecord say whether some photos are in the record.
type commitFailedAnswer struct {
	Success        bool                 `json:"success"`
	Error          string               `json:"error"`
	Code           string               `json:"code"`
	PartialSuccess bool                 `json:"partialSuccess"`
	InRecord       int                  `json:"inRecord"`
	ImageCount     int                  `json:"imageCount"`
	Stopped        bool                 `json:"stopped"`
	Errors         []session.ImageError `json:"errors"`
	Orphans        session.List[string] `json:"orphans"`
	CommitID       string               `json:"commitId"`
}

// stopCommitAnswer is POST commit/stop's.
type stopCommitAnswer struct {
	Success      bool                 `json:"success"`
	CommitStatus session.CommitStatus `json:"commitStatus"`
	CommitID     string               `json:"commitId"`
	InRecord     int                  `json:"inRecord"`
	ImageCount   int                  `json:"imageCount"`
	Message      string               `json:"message"`
	Session      sessionView          `json:"session"`
}

// commitStatusAnswer is GET commit's: where the last commit is.
type commitStatusAnswer struct {
	CommitStatus session.CommitStatus  `json:"commitStatus"`
	CommitID     string                `json:"commitId"`
	Commit       *session.CommitResult `json:"commit"`
}

// phonesAnswer is GET phones'.
type phonesAnswer struct {
	SessionID string                      `json:"sessionId"`
	Phones    session.List[session.Phone] `json:"phones"`
}

// phoneRemovedAnswer is DELETE phones/:phoneId's.
type phoneRemovedAnswer struct {
	Success bool                        `json:"success"`
	PhoneID string                      `json:"phoneId"`
	Phones  session.List[session.Phone] `json:"phones"`
}

// auditAnswer is GET sessions/:sessionId/audit's, as JSON.
type auditAnswer struct {
	SessionID string         `json:"sessionId"`
	Records   []audit.Record `json:"records"`
}

// devTokenAnswer is GET /dev/token's (local stack only).
type devTokenAnswer struct {
	Token  string `json:"token"`
	UserID string `json:"userId"`
}
