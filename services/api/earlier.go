package api

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// alexReader is what the earlier-photos route needs of ALEX (a
// *fhir.Client): the patient's NHI, their Media by NHI, one Media's photo.
type alexReader interface {
	PatientNHI(ctx context.Context, patientID string) (string, error)
	PatientMedia(ctx context.Context, nhi string) ([]fhir.Earlier, error)
	MediaContent(ctx context.Context, id string) ([]byte, string, error)
}

// The states of an earlier-photos answer. Only "ok" lists photos; each
// other is a sentence on the widget, not an error.
const (
	earlierOK            = "ok"
	earlierNone          = "none"           // the patient has an NHI and no Media in the record
	earlierNoNHI         = "no_nhi"         // no NHI to search by (ALEX searches Media by NHI only)
	earlierNotConfigured = "not_configured" // this API has no ALEX credentials
)

// earlierMessages are the sentences each state reads as.
var earlierMessages = map[string]string{
	earlierNone:          "No earlier photos of this patient in the record.",
	earlierNoNHI:         "This patient has no NHI in the record, so earlier photos cannot be looked up.",
	earlierNotConfigured: "Earlier photos are not set up for this practice.",
}

// earlierLimit is how many of the newest earlier photos get a preview.
const earlierLimit = 30

// earlierPreviewSize is the longest side of an earlier photo's preview, in
// pixels: as large as the viewer shows a new photo beside it.
const earlierPreviewSize = 1024

// earlierPhoto is one earlier Media as the widget lists it.
type earlierPhoto struct {
	ID         string       `json:"id"`
	Taken      *time.Time   `json:"taken,omitempty"`
	BodySite   *earlierSite `json:"bodySite,omitempty"`
	Laterality string       `json:"laterality,omitempty"`
	View       string       `json:"view,omitempty"`
	Note       string       `json:"note,omitempty"`
	PreviewURL string       `json:"previewUrl,omitempty"`
	// PreviewKey is where the preview is kept (cached, never answered).
	PreviewKey string `json:"previewKey,omitempty"`
}

type earlierSite struct {
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

// earlierList is what the route answers, and (without URLs) what is
// cached for the session.
type earlierList struct {
	State     string         `json:"state"`
	Message   string         `json:"message,omitempty"`
	Photos    []earlierPhoto `json:"photos"`
	FetchedAt time.Time      `json:"fetchedAt"`
	// Partial is true when some photos' previews could not be read from
	// ALEX this time: such a list is not cached, so the next read tries
	// again.
	Partial bool `json:"partial,omitempty"`
}

// earlierStore fetches a session patient's earlier Media from ALEX once,
// keeps small previews of them with the session's objects (so the sweep
// deletes them when the session ends, as it does the session's photos),
// and caches the list in Redis for the session's lifetime.
type earlierStore struct {
	alex    alexReader
	objects interface {
		Put(ctx context.Context, key, contentType string, body io.ReadSeeker, size int64) error
		Delete(ctx context.Context, keys ...string) error
	}
	store interface {
		Options() session.Options
		TrackObjects(ctx context.Context, userID, sessionID string, keys ...string) error
	}
	rdb redis.Cmdable
	log *slog.Logger
	now func() time.Time
}

// cacheKey holds the list of one session's earlier photos.
func (e *earlierStore) cacheKey(userID, sessionID string) string {
	return e.store.Options().Prefix + "earlier:" + userID + ":" + sessionID
}

// previewKey is under the user's temp/ prefix (the bucket's lifecycle
// rule covers it) but never of the shape a phone may record as a photo.
func previewKey(userID, sessionID, mediaID string) string {
	sum := sha1.Sum([]byte(mediaID))
	return "temp/" + userID + "/earlier/" + sessionID + "/" + hex.EncodeToString(sum[:10]) + ".jpg"
}

// list answers sess's earlier photos: the cached list, or ALEX's.
func (e *earlierStore) list(ctx context.Context, sess session.Session) (earlierList, error) {
	key := e.cacheKey(sess.UserID, sess.SessionID)
	raw, err := e.rdb.Get(ctx, key).Bytes()
	if err == nil {
		var l earlierList
		if json.Unmarshal(raw, &l) == nil {
			return l, nil
		}
	} else if !errors.Is(err, redis.Nil) {
		return earlierList{}, fmt.Errorf("earlier cache: %w", err)
	}
	l, err := e.fetch(ctx, sess)
	if err != nil {
		return earlierList{}, err
	}
	if !l.Partial {
		b, _ := json.Marshal(l)
		ttl := cmp.Or(e.store.Options().SessionTTL, 2*time.Hour)
		if err := e.rdb.Set(ctx, key, b, ttl).Err(); err != nil {
			return earlierList{}, fmt.Errorf("earlier cache: %w", err)
		}
	}
	return l, nil
}

// fetch asks ALEX for the patient's NHI and Media and stores previews of
// the newest earlierLimit.
func (e *earlierStore) fetch(ctx context.Context, sess session.Session) (earlierList, error) {
	start := e.now()
	l := earlierList{Photos: []earlierPhoto{}, FetchedAt: start.UTC()}
	nhi, err := e.alex.PatientNHI(ctx, sess.PatientID)
	var fe *fhir.Error
	if errors.As(err, &fe) && fe.Status == http.StatusNotFound {
		nhi, err = "", nil // a patient ALEX does not know has no NHI to search by
	}
	if err != nil {
		return l, err
	}
	if nhi == "" {
		l.State, l.Message = earlierNoNHI, earlierMessages[earlierNoNHI]
		return l, nil
	}
	media, err := e.alex.PatientMedia(ctx, nhi)
	if err != nil {
		return l, err
	}
	if len(media) == 0 {
		l.State, l.Message = earlierNone, earlierMessages[earlierNone]
		return l, nil
	}
	l.State = earlierOK
	media = media[:min(len(media), earlierLimit)]
	l.Photos = make([]earlierPhoto, len(media))
	for i, m := range media {
		p := earlierPhoto{ID: m.ID, Laterality: m.Laterality, View: m.View, Note: m.Note}
		if !m.Taken.IsZero() {
			t := m.Taken
			p.Taken = &t
		}
		if m.BodySite != "" || m.BodySiteDisplay != "" {
			p.BodySite = &earlierSite{Code: m.BodySite, Display: m.BodySiteDisplay}
		}
		l.Photos[i] = p
	}
	keys := make([]string, len(media))
	for i, m := range media {
		keys[i] = previewKey(sess.UserID, sess.SessionID, m.ID)
	}
	// Tracked before written: a crash between the two leaves nothing the
	// sweep does not know of.
	if err := e.store.TrackObjects(ctx, sess.UserID, sess.SessionID, keys...); err != nil {
		return l, err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2) // each photo is decoded whole: two at a time
	var failed, skipped int
	for i, m := range media {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ok, err := e.preview(ctx, m.ID, keys[i])
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				failed++
				e.log.WarnContext(ctx, "earlier.preview_failed", "user_id", sess.UserID, "session_id", sess.SessionID, "err", logErr(err))
			case !ok:
				skipped++ // a format the API cannot preview (HEIC, WebP): listed without one
			default:
				l.Photos[i].PreviewKey = keys[i]
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return l, ctx.Err()
	}
	l.Partial = failed > 0
	e.log.InfoContext(ctx, "earlier.fetched", "user_id", sess.UserID, "session_id", sess.SessionID,
		"photos", len(l.Photos), "no_preview", skipped, "failed", failed, "ms", e.now().Sub(start).Milliseconds())
	return l, nil
}

// preview reads one Media's photo from ALEX and stores its preview at key.
// ok is false for a photo it cannot preview.
func (e *earlierStore) preview(ctx context.Context, mediaID, key string) (ok bool, err error) {
	b, _, err := e.alex.MediaContent(ctx, mediaID)
	if err != nil {
		var fe *fhir.Error
		if errors.As(err, &fe) {
			return false, err
		}
		return false, nil // the Media carries no photo
	}
	out, err := previewJPEG(b, earlierPreviewSize)
	if err != nil {
		return false, nil
	}
	if err := e.objects.Put(ctx, key, "image/jpeg", bytes.NewReader(out), int64(len(out))); err != nil {
		return false, fmt.Errorf("put preview: %w", err)
	}
	return true, nil
}

// forget deletes a session's earlier previews and its cached list, at once
// rather than at the sweep: the session was replaced by another patient's.
func (e *earlierStore) forget(ctx context.Context, userID, sessionID string) {
	key := e.cacheKey(userID, sessionID)
	raw, err := e.rdb.Get(ctx, key).Bytes()
	if err != nil {
		return // nothing cached: the sweep has whatever a failed fetch left
	}
	var l earlierList
	_ = json.Unmarshal(raw, &l)
	var keys []string
	for _, p := range l.Photos {
		if p.PreviewKey != "" {
			keys = append(keys, p.PreviewKey)
		}
	}
	if err := e.objects.Delete(ctx, keys...); err != nil {
		e.log.WarnContext(ctx, "earlier.forget", "user_id", userID, "session_id", sessionID, "err", err)
		return
	}
	_ = e.rdb.Del(ctx, key).Err()
}

// logErr is an ALEX error as it may be logged: the operation, status and
// issue code, never the server's message (it may quote the request).
func logErr(err error) string {
	var fe *fhir.Error
	if errors.As(err, &fe) {
		if fe.Err != nil {
			return "alex " + fe.Op + ": transport"
		}
		return "alex " + fe.Op + ": " + strconv.Itoa(fe.Status) + " " + fe.Code
	}
	return err.Error()
}

// getEarlierPhotos is GET /api/users/:userId/earlier-photos (desktop only):
// the session patient's earlier Media from ALEX, newest first, with
// short-lived preview URLs. ALEX is asked once per session; a failure is a
// 502 or 503 with code alex_unavailable, and is asked again next time.
func (s *Server) getEarlierPhotos(c *gin.Context) {
	ctx := c.Request.Context()
	sess, err := s.store.Peek(ctx, c.Param("userId"))
	if err != nil {
		s.respondErr(c, err)
		return
	}
	if s.earlier == nil {
		c.JSON(http.StatusOK, earlierList{State: earlierNotConfigured, Message: earlierMessages[earlierNotConfigured],
			Photos: []earlierPhoto{}, FetchedAt: s.now().UTC()})
		return
	}
	l, err := s.earlier.list(ctx, sess)
	var fe *fhir.Error
	if errors.As(err, &fe) {
		status := http.StatusBadGateway
		if fe.Transient() {
			status = http.StatusServiceUnavailable
			c.Header("Retry-After", "5")
		}
		s.log.WarnContext(ctx, "earlier.alex_failed", "user_id", sess.UserID, "session_id", sess.SessionID, "err", logErr(err))
		s.respondErr(c, clientErr(status, "alex_unavailable", "earlier photos are unavailable: the practice record (ALEX) did not answer; try again later"))
		return
	}
	if err != nil {
		s.respondErr(c, err)
		return
	}
	for i, p := range l.Photos {
		l.Photos[i].PreviewURL = s.presignGet(ctx, p.PreviewKey)
		l.Photos[i].PreviewKey = ""
	}
	c.JSON(http.StatusOK, l)
}
