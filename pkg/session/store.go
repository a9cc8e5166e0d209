package session

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// Errors a store operation returns. Each leaves the session unchanged.
var (
	ErrNotFound         = errors.New("session not found or expired")
	ErrTokenNotFound    = errors.New("session token expired or invalid")
	ErrTokenUsed        = errors.New("session token already used")
	ErrTokenRevoked     = errors.New("this QR code was replaced by a newer one: scan the code the desktop shows now")
	ErrPhoneLimit       = errors.New("this session already has its most phones: remove one on the desktop first")
	ErrPhoneNotFound    = errors.New("no such paired phone")
	ErrPhoneRemoved     = errors.New("this phone was removed from the session on the desktop")
	ErrSessionChanged   = errors.New("the session this credential was issued for has ended")
	ErrImageNotFound    = errors.New("image not found")
	ErrImageIDConflict  = errors.New("image id already used for another object")
	ErrImageDeleted     = errors.New("this photo was deleted from the session on the desktop; it is not added again")
	ErrCapReached       = errors.New("the session holds the maximum number of photos")
	ErrPatientMismatch  = errors.New("the session belongs to another patient than the one open")
	ErrCommitInProgress = errors.New("commit already in progress")
	ErrCommitted        = errors.New("session already committed")
	ErrNothingToCommit  = errors.New("no images to commit")
	ErrStale            = errors.New("commit is no longer current")
	ErrInRecord         = errors.New("this photo is in the patient record; ALEX offers no delete, so it stays as it was written")
	ErrMaybeInRecord    = errors.New("this photo may already be in the patient record; commit again so it is looked up before it changes")
	ErrNoCommit         = errors.New("no commit is in progress")
	ErrNotResendable    = errors.New("only a photo that needs checking or is in conflict can be sent again")
	ErrNotInRecord      = errors.New("not every photo is in the record")
)

// DuplicateError means a photo already in the record as MediaID was
// reported written again as another Media.
type DuplicateError struct{ MediaID string }

func (e *DuplicateError) Error() string {
	return "photo already in the record as Media " + e.MediaID
}

// UncommittedError refuses to replace a session that still holds photos.
type UncommittedError struct{ N int }

func (e *UncommittedError) Error() string {
	return fmt.Sprintf("%d uncommitted images for another patient or encounter; commit them or start again with discard: true", e.N)
}

// RejectedImagesError refuses a commit while rejected photos remain.
type RejectedImagesError struct{ N int }

func (e *RejectedImagesError) Error() string {
	return fmt.Sprintf("%d rejected images must be deleted before commit", e.N)
}

// Options configure a Store. Zero values take the defaults named.
type Options struct {
	// Prefix goes before every key; empty in production so the seeds' key
	// names hold, a unique value per test.
	Prefix string
	// Names are the event stream names (default events.DefaultNames).
	Names events.Names
	// Source is the CloudEvents source of the events this store emits.
	Source string
	// SessionTTL is the idle lifetime of user:{id} (default 2 h).
	SessionTTL time.Duration
	// TokenTTL is the lifetime of a QR token (default 1 h).
	TokenTTL time.Duration
	// CredentialTTL is the absolute lifetime of a phone credential (default 8 h);
	// it also ends when its session does.
	CredentialTTL time.Duration
	// CommittedTTL is how long a committed session stays readable (default 15 min).
	CommittedTTL time.Duration
	// MaxImages caps photos per session (default 50).
	MaxImages int
	// MaxPhones caps the phones paired with one session at once (default 2).
	MaxPhones int
	// MaxUploads caps a session's outstanding presigned uploads (default
	// DefaultMaxUploads).
	MaxUploads int
	// RequireConsent refuses a commit while the session has no consent
	// record (ErrConsentRequired); the API sets it from CONSENT_REQUIRED.
	RequireConsent bool
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Store keeps sessions in Redis. Every change is one Lua script that checks,
// changes, and appends its event to the outbox stream in the same step, so
// concurrent writers never lose an update and no change goes without its
// event. It needs nothing beyond EVALSHA/EVAL, MULTI, GET/SET, the hash
// commands and XADD, so it runs on Upstash as on any Redis 6.2+.
type Store struct {
	rdb  redis.Cmdable
	opt  Options
	Keys Keys
}

// NewStore returns a Store on rdb. The caller owns and closes rdb.
func NewStore(rdb redis.Cmdable, opt Options) *Store {
	if opt.Names == (events.Names{}) {
		opt.Names = events.DefaultNames
	}
	if opt.Source == "" {
		opt.Source = "/clinimg/api"
	}
	if opt.SessionTTL <= 0 {
		opt.SessionTTL = 2 * time.Hour
	}
	if opt.TokenTTL <= 0 {
		opt.TokenTTL = time.Hour
	}
	if opt.CredentialTTL <= 0 {
		opt.CredentialTTL = 8 * time.Hour
	}
	if opt.CommittedTTL <= 0 {
		opt.CommittedTTL = 15 * time.Minute
	}
	if opt.MaxImages <= 0 {
		opt.MaxImages = MaxImages
	}
	if opt.MaxPhones <= 0 {
		opt.MaxPhones = DefaultMaxPhones
	}
	if opt.MaxUploads <= 0 {
		opt.MaxUploads = DefaultMaxUploads
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	return &Store{rdb: rdb, opt: opt, Keys: Keys(opt.Prefix)}
}

// Options returns the store's options with defaults filled in.
func (s *Store) Options() Options { return s.opt }

// Keys builds the Redis key names under one prefix.
type Keys string

// User is the seeds' session key.
func (k Keys) User(userID string) string { return string(k) + "user:" + userID }

// Token is the seeds' QR token key.
func (k Keys) Token(token string) string { return string(k) + "session-token:" + token }

// Phone is a phone credential's key; only the credential's hash is stored.
func (k Keys) Phone(credential string) string {
	return string(k) + "phone:" + credentialHash(credential)
}

func credentialHash(credential string) string {
	sum := sha256.Sum256([]byte(credential))
	return hex.EncodeToString(sum[:])
}

// PhoneID names a phone on its session (its pending count) without
// revealing its credential: the first 12 hex digits of the credential's hash.
func PhoneID(credential string) string { return credentialHash(credential)[:12] }

// QR names the user's one live QR token: a new code revokes the earlier.
func (k Keys) QR(userID string) string { return string(k) + "qr:" + userID }

// Outbox is the stream of events waiting to be published to JetStream.
func (k Keys) Outbox() string { return string(k) + "outbox" }

// Running is the sorted set of users whose commit is in_progress, by the
// time it began (or was last swept), in Unix ms.
func (k Keys) Running() string { return string(k) + "commits-running" }

// CommitLock is held by the one committer working on a user's commit.
func (k Keys) CommitLock(userID string) string { return string(k) + "commit-lock:" + userID }

// StartParams describe a new capture session.
type StartParams struct {
	UserID      string
	PatientID   string
	EncounterID string
	Token       string // the QR token, chosen by the caller
	SessionID   string // id for a new session, chosen by the caller
	Discard     bool   // replace a session that still has uncommitted photos
}

// Started is the outcome of Start.
type Started struct {
	Session   Session
	Token     SessionToken
	Reused    bool    // the same patient and encounter's session goes on
	Discarded []Image // photos of the replaced session, for clean-up
}

// Start opens a capture session and its QR token. The same patient and
// encounter continue their session; another patient's replaces it only when
// it holds no uncommitted photos or p.Discard is set.
func (s *Store) Start(ctx context.Context, p StartParams) (Started, error) {
	now := s.opt.Now().UTC()
	sess := Session{
		SessionID: p.SessionID, UserID: p.UserID, PatientID: p.PatientID, EncounterID: p.EncounterID,
		Images: List[Image]{}, CommitStatus: CommitNone, CreatedAt: now, LastActivity: now,
	}
	tok := SessionToken{UserID: p.UserID, PatientID: p.PatientID, EncounterID: p.EncounterID, SessionID: p.SessionID, CreatedAt: now}
	discard := "0"
	if p.Discard {
		discard = "1"
	}
	r, err := s.run(ctx, startScript, events.SessionStarted, p.UserID, keyNames{"token": s.Keys.Token(p.Token), "qr": s.Keys.QR(p.UserID)},
		args{"newSession": mustJSON(sess), "tokenRecord": mustJSON(tok), "tokenTtl": secs(s.opt.TokenTTL), "discard": discard})
	if err != nil {
		return Started{}, err
	}
	out := Started{Session: r.Session, Reused: r.Outcome == "reuse"}
	var d struct {
		Images List[Image] `json:"images"`
	}
	if err := json.Unmarshal([]byte(r.Extra), &d); err != nil {
		return Started{}, fmt.Errorf("decode discarded: %w", err)
	}
	out.Discarded = d.Images
	tok.SessionID = out.Session.SessionID
	out.Token = tok
	return out, nil
}

// Get returns the session and refreshes its idle TTL.
func (s *Store) Get(ctx context.Context, userID string) (Session, error) {
	return s.read(ctx, userID, true)
}

// Peek returns the session without touching its TTL (for workers).
func (s *Store) Peek(ctx context.Context, userID string) (Session, error) {
	return s.read(ctx, userID, false)
}

// read reads the session hash (see scripts.go): its own fields and every
// photo, in order; refresh also restarts its idle TTL.
func (s *Store) read(ctx context.Context, userID string, refresh bool) (Session, error) {
	key := s.Keys.User(userID)
	var all *redis.MapStringStringCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		all = p.HGetAll(ctx, key)
		if refresh {
			p.Expire(ctx, key, s.opt.SessionTTL)
		}
		return nil
	})
	if err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") {
		// Stored whole by an earlier version, until its next change.
		if refresh {
			return decodeSession(s.rdb.GetEx(ctx, key, s.opt.SessionTTL).Result())
		}
		return decodeSession(s.rdb.Get(ctx, key).Result())
	}
	if err != nil {
		return Session{}, fmt.Errorf("get session: %w", err)
	}
	m := all.Val()
	head, ok := m["session"]
	if !ok {
		return Session{}, ErrNotFound
	}
	var order struct {
		ImageIDs []string `json:"imageIds"`
	}
	if err := json.Unmarshal([]byte(head), &order); err != nil {
		return Session{}, fmt.Errorf("decode session: %w", err)
	}
	photos := make([]any, 0, len(order.ImageIDs))
	for _, id := range order.ImageIDs {
		if raw, ok := m["image:"+id]; ok {
			photos = append(photos, raw)
		}
	}
	sess, _, err := assemble(head, photos)
	return sess, err
}

// Token reads a QR token without using it.
func (s *Store) Token(ctx context.Context, token string) (SessionToken, error) {
	raw, err := s.rdb.Get(ctx, s.Keys.Token(token)).Result()
	if errors.Is(err, redis.Nil) {
		return SessionToken{}, ErrTokenNotFound
	}
	if err != nil {
		return SessionToken{}, fmt.Errorf("get token: %w", err)
	}
	var t SessionToken
	if err := json.Unmarshal([]byte(raw), &t); err != nil {
		return SessionToken{}, fmt.Errorf("decode token: %w", err)
	}
	return t, nil
}

// DefaultMaxPhones is how many phones one session takes at once unless
// Options.MaxPhones says otherwise.
const DefaultMaxPhones = 2

// Pair uses a QR token once: it marks the token used, stores the phone
// credential (only its hash) and adds the phone, named PhoneID(credential),
// to the session. Only the user's latest QR token pairs (ErrTokenRevoked),
// and at most Options.MaxPhones phones at once (ErrPhoneLimit).
func (s *Store) Pair(ctx context.Context, token, credential, userAgent string) (SessionToken, error) {
	t, err := s.Token(ctx, token)
	if err != nil {
		return SessionToken{}, err
	}
	if t.Used {
		return SessionToken{}, ErrTokenUsed
	}
	r, err := s.run(ctx, pairScript, events.PhonePaired, t.UserID,
		keyNames{"token": s.Keys.Token(token), "phone": s.Keys.Phone(credential), "qr": s.Keys.QR(t.UserID)},
		args{"userAgent": userAgent, "credentialTtl": secs(s.opt.CredentialTTL), "phoneId": PhoneID(credential), "maxPhones": strconv.Itoa(s.opt.MaxPhones)})
	if err != nil {
		return SessionToken{}, err
	}
	var out SessionToken
	if err := json.Unmarshal([]byte(r.Extra), &out); err != nil {
		return SessionToken{}, fmt.Errorf("decode token: %w", err)
	}
	return out, nil
}

// RemovePhone ends a paired phone's access: its credential no longer
// resolves and the session.unpaired event ends its realtime stream.
// sessionID binds the call to one session ("" for the current one).
func (s *Store) RemovePhone(ctx context.Context, userID, sessionID, phoneID string) (Session, error) {
	r, err := s.run(ctx, unpairScript, events.PhoneRemoved, userID, nil, args{"phoneId": phoneID, "sessionId": sessionID})
	if err != nil {
		return Session{}, err
	}
	return r.Session, nil
}

// Credential resolves a phone credential. It fails with ErrSessionChanged
// once the session it was issued for has ended or been replaced.
func (s *Store) Credential(ctx context.Context, credential string) (PhoneCredential, error) {
	raw, err := s.rdb.Get(ctx, s.Keys.Phone(credential)).Result()
	if errors.Is(err, redis.Nil) {
		return PhoneCredential{}, ErrTokenNotFound
	}
	if err != nil {
		return PhoneCredential{}, fmt.Errorf("get credential: %w", err)
	}
	var c PhoneCredential
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return PhoneCredential{}, fmt.Errorf("decode credential: %w", err)
	}
	return c, nil
}

// AddImage records a photo. sessionID binds the call to one session ("" for
// the user's current one). Recording the same image id again returns the
// session unchanged with added false; recording an id deleted from the
// session (RemoveImage) fails with ErrImageDeleted for as long as the
// session lasts.
func (s *Store) AddImage(ctx context.Context, userID, sessionID string, img Image) (sess Session, added bool, err error) {
	return s.AddImageBound(ctx, userID, Binding{SessionID: sessionID}, img)
}

// Binding is what a change must find for it to apply; empty fields check
// nothing.
type Binding struct {
	// SessionID is the session a phone was paired with.
	SessionID string
	// PatientID is the patient the practice system has open on the desktop:
	// nothing is added to another patient's session (ErrPatientMismatch).
	PatientID string
	// PhoneID is the phone making the change, which must still be paired
	// with the session (ErrPhoneRemoved).
	PhoneID string
}

// AddImageBound is AddImage with every check of b. When b names the
// session, the photo's upload stops counting against the session's
// outstanding ones in the same step (what UploadRecorded does), whether it
// was added or was there already; a caller that names no session calls
// UploadRecorded itself.
func (s *Store) AddImageBound(ctx context.Context, userID string, b Binding, img Image) (sess Session, added bool, err error) {
	if img.Status == "" {
		img.Status = ImageProcessing
	}
	// The server's identity for the photo in the record: 128 random bits,
	// whatever the client called it.
	img.MediaIdentifier = rand.Text()
	img.CommitState = PhotoPending
	img.MediaID, img.Error, img.SentHashes, img.Tries = "", "", nil, 0
	r, err := s.runRead(ctx, addScript, events.ImageUploaded, userID, keyNames{"uploads": s.Keys.Uploads(userID, b.SessionID)}, args{
		"image": mustJSON(img), "sessionId": b.SessionID, "cap": strconv.Itoa(s.opt.MaxImages), "patientId": b.PatientID, "phoneId": b.PhoneID,
	})
	if err != nil {
		return Session{}, false, err
	}
	return r.Session, r.Outcome == "added", nil
}

// SetOpenPatient records which patient the practice system has open, as the
// desktop sees it. While it is another patient than the session's, nothing
// is added to the session (ErrPatientMismatch), from a phone either; the
// session's own patient lifts that. Saying the same again changes nothing.
func (s *Store) SetOpenPatient(ctx context.Context, userID, patientID string) (Session, bool, error) {
	r, err := s.run(ctx, openedScript, events.PatientOpened, userID, nil, args{"patientId": patientID})
	if err != nil {
		return Session{}, false, err
	}
	return r.Session, r.Outcome == "changed", nil
}

// SetPending records how many photos one phone still holds unrecorded, so
// the desktop can say they are coming and ask before a commit leaves them
// behind. A count of 0 removes the phone's entry; the same count again
// changes nothing (changed false, no event). A phone no longer paired gets
// ErrPhoneRemoved.
func (s *Store) SetPending(ctx context.Context, userID, sessionID, phoneID string, count int) (Session, bool, error) {
	r, err := s.run(ctx, pendingScript, events.PhonePending, userID, nil, args{"sessionId": sessionID, "phoneId": phoneID, "count": strconv.Itoa(count)})
	if err != nil {
		return Session{}, false, err
	}
	return r.Session, r.Outcome == "changed", nil
}

// MetadataPatch changes the named metadata fields; nil leaves one as it is,
// an empty string clears it.
type MetadataPatch struct {
	BodySite        *string `json:"bodySite,omitempty"`
	BodySiteDisplay *string `json:"bodySiteDisplay,omitempty"`
	Laterality      *string `json:"laterality,omitempty"`
	ViewType        *string `json:"viewType,omitempty"`
	Notes           *string `json:"notes,omitempty"`
}

// UpdateMetadata applies p to one photo.
func (s *Store) UpdateMetadata(ctx context.Context, userID, sessionID, imageID string, p MetadataPatch) (Session, error) {
	r, err := s.run(ctx, updateScript, events.ImageUpdated, userID, nil, args{"imageId": imageID, "patch": mustJSON(p), "sessionId": sessionID})
	if err != nil {
		return Session{}, err
	}
	return r.Session, nil
}

// RemoveImage deletes one photo from the session and returns it so the caller
// can delete its objects. The id stays deleted: a later AddImage of it
// fails with ErrImageDeleted until the session ends.
func (s *Store) RemoveImage(ctx context.Context, userID, sessionID, imageID string) (Session, Image, error) {
	r, err := s.run(ctx, removeScript, events.ImageRemoved, userID, nil, args{"imageId": imageID, "sessionId": sessionID})
	if err != nil {
		return Session{}, Image{}, err
	}
	var img Image
	if err := json.Unmarshal([]byte(r.Extra), &img); err != nil {
		return Session{}, Image{}, fmt.Errorf("decode image: %w", err)
	}
	return r.Session, img, nil
}

// Deleted reports whether imageID was deleted from the user's session
// (RemoveImage) and, if so, the object key it had. It reads only: AddImage
// checks the same tombstone atomically. A caller whose photo's object is
// gone uses it to tell a deleted photo from an upload that never landed.
func (s *Store) Deleted(ctx context.Context, userID, imageID string) (s3Key string, deleted bool, err error) {
	key, err := s.rdb.HGet(ctx, s.Keys.User(userID), "deleted:"+imageID).Result()
	switch {
	case errors.Is(err, redis.Nil), err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
		return "", false, nil // no such session, or one stored whole: it has no tombstones
	case err != nil:
		return "", false, fmt.Errorf("read tombstone: %w", err)
	}
	return key, true, nil
}

// Processed is what the thumbnailer found and made for one photo.
type Processed struct {
	Status     ImageStatus `json:"status"` // ready or rejected
	PreviewKey string      `json:"previewKey,omitempty"`
	ViewerKey  string      `json:"viewerKey,omitempty"`
	CleanKey   string      `json:"cleanKey,omitempty"`
	CleanSize  int64       `json:"cleanSize,omitempty"`
	SHA256     string      `json:"sha256,omitempty"`
	// OriginalSHA256 and CleanSHA1: see Image.
	OriginalSHA256 string `json:"originalSha256,omitempty"`
	CleanSHA1      string `json:"cleanSha1,omitempty"`
	Width          int    `json:"width,omitempty"`
	Height         int    `json:"height,omitempty"`
	Size           int64  `json:"size,omitempty"`
	ContentType    string `json:"contentType,omitempty"`
	RejectReason   string `json:"rejectReason,omitempty"`
}

// SetProcessed records the thumbnailer's result for a photo still
// "processing" and emits image.processed or image.rejected; for any other
// photo it changes nothing and changed is false.
func (s *Store) SetProcessed(ctx context.Context, userID, imageID string, p Processed) (sess Session, changed bool, err error) {
	t := events.ImageProcessed
	if p.Status == ImageRejected {
		t = events.ImageRejected
	}
	r, err := s.run(ctx, processedScript, t, userID, nil, args{"imageId": imageID, "fields": mustJSON(p)})
	if err != nil {
		return Session{}, false, err
	}
	return r.Session, r.Outcome == "changed", nil
}

// BeginCommit moves the session to in_progress under commitID and emits
// commit.requested, the committer's work item. A second call gets
// ErrCommitInProgress. Photos in the record stay there and are not sent
// again. resend names photos that need checking or are in conflict which
// the GP, having checked the record, wants sent again: each gets a new
// identifier, so the new write can never be taken for the uncertain one.
func (s *Store) BeginCommit(ctx context.Context, userID, sessionID, commitID string, resend ...string) (Session, error) {
	again := map[string]string{}
	for _, id := range resend {
		again[id] = rand.Text()
	}
	need := "0"
	if s.opt.RequireConsent {
		need = "1"
	}
	r, err := s.run(ctx, beginScript, events.CommitRequested, userID, keyNames{"running": s.Keys.Running()}, args{
		"commitId": commitID, "sessionId": sessionID, "resend": mustJSON(again), "consentRequired": need,
		"nowMs": s.opt.Now().UnixMilli(), "userId": userID,
	})
	if err != nil {
		return Session{}, err
	}
	return r.Session, nil
}

// FinishCommit marks the session committed once every photo is in the
// record (ErrNotInRecord otherwise), keeps it for CommittedTTL so late
// screens see the outcome, and emits commit.succeeded. Calling it again
// changes nothing.
func (s *Store) FinishCommit(ctx context.Context, userID, commitID string) (Session, bool, error) {
	r, err := s.runTTL(ctx, finishScript, events.CommitSucceeded, userID, keyNames{"running": s.Keys.Running()}, s.opt.CommittedTTL,
		args{"commitId": commitID, "userId": userID})
	if err != nil {
		return Session{}, false, err
	}
	return r.Session, r.Outcome == "changed", nil
}

// FailCommit ends the commit without every photo in the record: the
// session is editable again, every photo keeps its state (what is in the
// record stays so), and commit.failed carries message, the photos the GP
// must act on, and orphans (Media written for photos no longer in the
// session that could not be withdrawn).
func (s *Store) FailCommit(ctx context.Context, userID, commitID, message string, orphans []string) (Session, bool, error) {
	r, err := s.run(ctx, failScript, events.CommitFailed, userID, keyNames{"running": s.Keys.Running()},
		args{"commitId": commitID, "message": message, "orphans": mustJSON(List[string](orphans)), "userId": userID})
	if err != nil {
		return Session{}, false, err
	}
	return r.Session, r.Outcome == "changed", nil
}

// PhotoUpdate is one change to a photo's commit state.
type PhotoUpdate struct {
	CommitID   string     // the commit making it; sending needs it current
	ImageID    string     //
	Identifier string     // the photo's MediaIdentifier, which must still match
	State      PhotoState // the new state
	Tries      int        // the photo's Tries the caller saw (not for in_record)
	MediaID    string     // in_record
	Hash       string     // sending: SHA-1 (base64) of the body about to be sent; in_record: of the bytes in the record, if known
	Error      string     // refused, unknown, needs_checking, conflict: why
}

// RecordPhoto changes one photo's commit state and, except for sending,
// emits commit.progress. in_record always lands (a different Media for a
// photo already in the record gives *DuplicateError); sending needs the
// commit current and Tries unchanged and increments Tries; any other
// state lands only if Tries is unchanged. ErrStale means the photo moved
// on (or, for sending, the commit did); ErrImageNotFound that the photo,
// with that identifier, is no longer in the session.
func (s *Store) RecordPhoto(ctx context.Context, userID string, u PhotoUpdate) (Recorded, bool, error) {
	r, err := s.run(ctx, photoScript, events.CommitProgress, userID, nil, args{
		"commitId": u.CommitID, "imageId": u.ImageID, "identifier": u.Identifier, "state": string(u.State),
		"tries": strconv.Itoa(u.Tries), "mediaId": u.MediaID, "hash": u.Hash, "error": u.Error,
	})
	if err != nil {
		return Recorded{}, false, err
	}
	if n := len(r.Session.Images); n != 1 {
		return Recorded{}, false, fmt.Errorf("record photo: answer holds %d photos", n)
	}
	return Recorded{Image: r.Session.Images[0], Commit: r.Session.Commit}, r.Outcome == "changed", nil
}

// Recorded is RecordPhoto's answer: the photo as it now stands and the
// session's commit. The session's other photos are not read back, so a
// ledger write costs the same in a session of 50 photos as in one of 1.
type Recorded struct {
	Image  Image
	Commit *CommitResult
}

// CommitAttempt records that attempt n of the commit has begun (wait nil)
// or failed and waits to try again (wait set), and emits commit.progress.
// ErrStale if commitID is no longer the session's running commit.
func (s *Store) CommitAttempt(ctx context.Context, userID, commitID string, n int, wait *CommitWait) (Session, error) {
	w := ""
	if wait != nil {
		w = mustJSON(wait)
	}
	r, err := s.run(ctx, attemptScript, events.CommitProgress, userID, nil, args{"commitId": commitID, "attempt": strconv.Itoa(n), "wait": w})
	if err != nil {
		return Session{}, err
	}
	return r.Session, nil
}

// StopCommit is the GP giving up waiting for a running commit: the session
// becomes editable again, every photo in the record stays known as such,
// and a write still on its way is marked unknown so it is looked up before
// anything is sent again. It emits commit.failed with stopped set.
// ErrNoCommit if none is running, ErrCommitted if it already finished.
func (s *Store) StopCommit(ctx context.Context, userID, sessionID string) (Session, error) {
	r, err := s.run(ctx, stopScript, events.CommitFailed, userID, keyNames{"running": s.Keys.Running()}, args{"sessionId": sessionID, "userId": userID})
	if err != nil {
		return Session{}, err
	}
	return r.Session, nil
}

// ClaimStuck returns up to n users whose commit has been in_progress since
// before cutoff (as far as the running-commits index knows), and marks each
// claimed now: another sweeper, or the next sweep, takes it again only
// after another cutoff. at is the time claimed, for ForgetRunning.
func (s *Store) ClaimStuck(ctx context.Context, cutoff time.Time, n int) (users []string, at int64, err error) {
	at = s.opt.Now().UnixMilli()
	users, err = claimStuckScript.run(ctx, s.rdb, keyNames{"running": s.Keys.Running()}, args{"cutoff": cutoff.UnixMilli(), "now": at, "limit": n}).StringSlice()
	if err != nil {
		return nil, 0, fmt.Errorf("claim stuck commits: %w", err)
	}
	return users, at, nil
}

// ForgetRunning drops userID from the running commits if it is still as
// ClaimStuck left it at at (no commit began since).
func (s *Store) ForgetRunning(ctx context.Context, userID string, at int64) error {
	if err := forgetRunningScript.run(ctx, s.rdb, keyNames{"running": s.Keys.Running()}, args{"userId": userID, "at": at}).Err(); err != nil {
		return fmt.Errorf("forget running commit: %w", err)
	}
	return nil
}

// Delete removes a session outright (tests and explicit discards).
func (s *Store) Delete(ctx context.Context, userID string) error {
	if err := s.rdb.Del(ctx, s.Keys.User(userID)).Err(); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

// run runs a session script with its own keys k (nil for none) and
// arguments a; call adds the session's.
func (s *Store) run(ctx context.Context, sc *luaScript, t events.Type, userID string, k keyNames, a args) (reply, error) {
	return s.runTTL(ctx, sc, t, userID, k, s.opt.SessionTTL, a)
}

func (s *Store) runTTL(ctx context.Context, sc *luaScript, t events.Type, userID string, k keyNames, ttl time.Duration, a args) (reply, error) {
	keys, argv, err := s.call(ctx, sc, t, userID, k, ttl, a)
	if err != nil {
		return reply{}, err
	}
	res, err := sc.script.Run(ctx, s.rdb, keys, argv...).Result()
	if err != nil {
		return reply{}, scriptError(t, err)
	}
	return decodeReply(res)
}

// runRead runs a script (with its own keys k) that answers the session's
// own fields only and, in the same MULTI (one round trip, nothing in
// between), reads the session hash it changed, so the answer holds every
// photo without the script handling them.
func (s *Store) runRead(ctx context.Context, sc *luaScript, t events.Type, userID string, k keyNames, a args) (reply, error) {
	keys, argv, err := s.call(ctx, sc, t, userID, k, s.opt.SessionTTL, a)
	if err != nil {
		return reply{}, err
	}
	var res *redis.Cmd
	var all *redis.MapStringStringCmd
	exec := func() error {
		_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			res = sc.script.EvalSha(ctx, p, keys, argv...)
			all = p.HGetAll(ctx, keys[0])
			return nil
		})
		return err
	}
	err = exec()
	if err != nil && res.Err() != nil && strings.HasPrefix(res.Err().Error(), "NOSCRIPT") {
		if err = sc.script.Load(ctx, s.rdb).Err(); err == nil {
			err = exec()
		}
	}
	if res != nil && res.Err() != nil {
		return reply{}, scriptError(t, res.Err())
	}
	if err != nil {
		return reply{}, fmt.Errorf("session %s: %w", t, err)
	}
	// The session's own fields are decoded once, whichever photos the
	// answer is assembled from: they are a good part of the work.
	r, photos, err := splitReply(res.Val())
	if err != nil {
		return reply{}, err
	}
	if r.Session, r.order, err = decodeHead(r.head); err != nil {
		return reply{}, err
	}
	if len(photos) < len(r.order) {
		m := all.Val()
		photos = make([]any, 0, len(r.order))
		for _, id := range r.order {
			if raw, ok := m["image:"+id]; ok {
				photos = append(photos, raw)
			}
		}
	}
	r.Session.Images, err = decodePhotos(photos)
	return r, err
}

// call is a session script's KEYS and ARGV: the session and outbox keys
// and k; now, the TTL, the event (a new id, the caller's trace) and its
// subject, and a; each in the order sc declares.
func (s *Store) call(ctx context.Context, sc *luaScript, t events.Type, userID string, k keyNames, ttl time.Duration, a args) ([]string, []any, error) {
	if !events.ValidUserID(userID) {
		return nil, nil, ErrNotFound
	}
	now := s.opt.Now().UTC()
	data := map[string]Actor{}
	if a := ActorFrom(ctx); a != "" {
		data["by"] = a
	}
	ev, err := events.New(s.opt.Source, t, userID, data, now)
	if err != nil {
		return nil, nil, err
	}
	ev.TraceParent = events.TraceParentFrom(ctx)
	allKeys := keyNames{"session": s.Keys.User(userID), "outbox": s.Keys.Outbox()}
	allArgs := args{"now": now.Format(time.RFC3339Nano), "ttl": secs(ttl), "event": mustJSON(ev), "subject": s.opt.Names.SubjectOf(ev)}
	if err := merge(allKeys, k); err != nil {
		return nil, nil, fmt.Errorf("script %s: keys: %w", sc.name, err)
	}
	if err := merge(allArgs, a); err != nil {
		return nil, nil, fmt.Errorf("script %s: arguments: %w", sc.name, err)
	}
	return sc.bind(allKeys, allArgs)
}

// merge adds extra to into, refusing a name into has already.
func merge[V any](into, extra map[string]V) error {
	for n, v := range extra {
		if _, ok := into[n]; ok {
			return fmt.Errorf("%q is given by the store", n)
		}
		into[n] = v
	}
	return nil
}

// scriptError maps a script's "CI_<CODE> detail" reply to a domain error.
func scriptError(t events.Type, err error) error {
	msg := err.Error()
	code, detail, _ := strings.Cut(strings.TrimPrefix(msg, "ERR "), " ")
	n, _ := strconv.Atoi(detail)
	switch code {
	case "CI_SESSION_NOT_FOUND":
		return ErrNotFound
	case "CI_TOKEN_NOT_FOUND":
		return ErrTokenNotFound
	case "CI_TOKEN_USED":
		return ErrTokenUsed
	case "CI_TOKEN_REVOKED":
		return ErrTokenRevoked
	case "CI_PHONE_LIMIT":
		return ErrPhoneLimit
	case "CI_PHONE_NOT_FOUND":
		return ErrPhoneNotFound
	case "CI_SESSION_CHANGED":
		return ErrSessionChanged
	case "CI_PHONE_REMOVED":
		return ErrPhoneRemoved
	case "CI_IMAGE_NOT_FOUND":
		return ErrImageNotFound
	case "CI_IMAGE_ID_CONFLICT":
		return ErrImageIDConflict
	case "CI_IMAGE_DELETED":
		return ErrImageDeleted
	case "CI_CAP":
		return ErrCapReached
	case "CI_PATIENT_MISMATCH":
		return ErrPatientMismatch
	case "CI_COMMIT_IN_PROGRESS":
		return ErrCommitInProgress
	case "CI_COMMITTED":
		return ErrCommitted
	case "CI_NOTHING_TO_COMMIT":
		return ErrNothingToCommit
	case "CI_STALE":
		return ErrStale
	case "CI_UNCOMMITTED":
		return &UncommittedError{N: n}
	case "CI_REJECTED_IMAGES":
		return &RejectedImagesError{N: n}
	case "CI_IN_RECORD":
		return ErrInRecord
	case "CI_MAYBE_IN_RECORD":
		return ErrMaybeInRecord
	case "CI_NO_COMMIT":
		return ErrNoCommit
	case "CI_NOT_RESENDABLE":
		return ErrNotResendable
	case "CI_NOT_IN_RECORD":
		return ErrNotInRecord
	case "CI_CONSENT_REQUIRED":
		return ErrConsentRequired
	case "CI_DUPLICATE":
		return &DuplicateError{MediaID: detail}
	}
	return fmt.Errorf("session %s: %w", t, err)
}

func decodeSession(raw string, err error) (Session, error) {
	if errors.Is(err, redis.Nil) {
		return Session{}, ErrNotFound
	}
	if err != nil {
		return Session{}, fmt.Errorf("get session: %w", err)
	}
	var s Session
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return Session{}, fmt.Errorf("decode session: %w", err)
	}
	if s.Images == nil {
		s.Images = List[Image]{}
	}
	if s.Phones == nil {
		s.Phones = List[Phone]{}
	}
	return s, nil
}

// reply is every script's answer (the shape is written in scripts.go):
// an outcome word, a document some scripts add, and the session.
type reply struct {
	Outcome string
	Extra   string
	Session Session
	head    string   // the session's own fields, as stored
	order   []string // its photos' ids, in order
}

func decodeReply(res any) (reply, error) {
	r, photos, err := splitReply(res)
	if err != nil {
		return reply{}, err
	}
	r.Session, r.order, err = assemble(r.head, photos)
	return r, err
}

// splitReply is a script's reply with its session not yet decoded: the
// session's own fields in head, and the photos it sent.
func splitReply(res any) (reply, []any, error) {
	arr, ok := res.([]any)
	if !ok || len(arr) < 3 {
		return reply{}, nil, fmt.Errorf("script reply %T", res)
	}
	r := reply{}
	r.Outcome, _ = arr[0].(string)
	r.Extra, _ = arr[1].(string)
	r.head, _ = arr[2].(string)
	return r, arr[3:], nil
}

// assemble is the session from its own fields and its photos, each JSON,
// and the ids of the photos it holds.
func assemble(head string, photos []any) (Session, []string, error) {
	s, ids, err := decodeHead(head)
	if err != nil {
		return Session{}, nil, err
	}
	s.Images, err = decodePhotos(photos)
	return s, ids, err
}

// decodeHead is the session from its own fields (no photos yet) and the
// ids of the photos it holds.
func decodeHead(head string) (Session, []string, error) {
	var s struct {
		Session
		ImageIDs []string `json:"imageIds"`
	}
	if err := json.Unmarshal([]byte(head), &s); err != nil {
		return Session{}, nil, fmt.Errorf("decode session: %w", err)
	}
	return s.Session, s.ImageIDs, nil
}

// decodePhotos decodes photos, each a JSON string.
func decodePhotos(photos []any) (List[Image], error) {
	imgs := make(List[Image], len(photos))
	for i, p := range photos {
		raw, _ := p.(string)
		if err := json.Unmarshal([]byte(raw), &imgs[i]); err != nil {
			return nil, fmt.Errorf("decode photo: %w", err)
		}
	}
	return imgs, nil
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("session: encode %T: %v", v, err))
	}
	return string(b)
}

func secs(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) }

// ExpiresIn is how long the session has left before its idle expiry.
func (s *Store) ExpiresIn(ctx context.Context, userID string) (time.Duration, error) {
	d, err := s.rdb.PTTL(ctx, s.Keys.User(userID)).Result()
	if err != nil {
		return 0, fmt.Errorf("session ttl: %w", err)
	}
	if d < 0 {
		return 0, ErrNotFound
	}
	return d, nil
}
