package api

import (
	"context"
	"time"

	"github.com/clinicalimages/clinimg/pkg/audit"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// sessions is what the handlers need of the session store (a
// *session.Store in production): exactly the calls they make, so a test
// can stand a fake in for Redis.
type sessions interface {
	// Options are the store's settings, defaults filled in: the handlers
	// read its TTLs, and its Prefix names the API's own Redis keys.
	Options() session.Options

	// Starting and pairing; who a credential is.
	Start(ctx context.Context, p session.StartParams) (session.Started, error)
	Pair(ctx context.Context, token, credential, userAgent string) (session.SessionToken, error)
	Credential(ctx context.Context, credential string) (session.PhoneCredential, error)
	RemovePhone(ctx context.Context, userID, sessionID, phoneID string) (session.Session, error)

	// Reading.
	Get(ctx context.Context, userID string) (session.Session, error)
	Peek(ctx context.Context, userID string) (session.Session, error)
	SessionIDOf(ctx context.Context, userID string) (string, error)
	ExpiresIn(ctx context.Context, userID string) (time.Duration, error)

	// Uploads and photos.
	TrackUpload(ctx context.Context, userID, sessionID, key string, urlExpires time.Time) error
	TrackObjects(ctx context.Context, userID, sessionID string, keys ...string) error
	UploadRecorded(ctx context.Context, userID, sessionID, key string) error
	AddImageBound(ctx context.Context, userID string, b session.Binding, img session.Image) (session.Session, bool, error)
	Deleted(ctx context.Context, userID, imageID string) (s3Key string, deleted bool, err error)
	UpdateMetadata(ctx context.Context, userID, sessionID, imageID string, p session.MetadataPatch) (session.Session, error)
	RemoveImage(ctx context.Context, userID, sessionID, imageID string) (session.Session, session.Image, error)

	// The session's state: open patient, pending photos, consent, commit.
	SetOpenPatient(ctx context.Context, userID, patientID string) (session.Session, bool, error)
	SetPending(ctx context.Context, userID, sessionID, phoneID string, count int) (session.Session, bool, error)
	SetConsent(ctx context.Context, userID, sessionID string, c session.Consent) (session.Session, error)
	BeginCommit(ctx context.Context, userID, sessionID, commitID string, resend ...string) (session.Session, error)
	StopCommit(ctx context.Context, userID, sessionID string) (session.Session, error)
}

// commitWaiter hands a commit's outcome to the request waiting for it (a
// *Waiter, on NATS, in production).
type commitWaiter interface {
	Wait(commitID string) (<-chan session.CommitEvent, func())
}

// auditTrail reads sessions' chains of custody (an *audit.Store, in the
// bucket, in production).
type auditTrail interface {
	Read(ctx context.Context, userID, sessionID string) ([]audit.Record, error)
}

var (
	_ sessions     = (*session.Store)(nil)
	_ commitWaiter = (*Waiter)(nil)
	_ auditTrail   = (*audit.Store)(nil)
)
