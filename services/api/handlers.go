package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	qrcode "github.com/skip2/go-qrcode"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/hygiene"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
)

type startRequest struct {
	PatientID   string `json:"patientId"`
	EncounterID string `json:"encounterId"`
	Discard     bool   `json:"discard"`
}

// startSession is the seeds' POST /api/session-tokens: a QR token for the
// current patient and encounter. Another patient's uncommitted photos are
// never overwritten unless the request says discard.
func (s *Server) startSession(c *gin.Context) {
	var req startRequest
	if err := decodeJSON(c, &req, false); err != nil {
		s.respondErr(c, err)
		return
	}
	if !fhirID.MatchString(req.PatientID) {
		s.respondErr(c, invalid("patient_id", "patientId must be 1-64 letters, digits, '.', '_' or '-'"))
		return
	}
	if !fhirID.MatchString(req.EncounterID) {
		s.respondErr(c, invalid("encounter_id", "encounterId must be 1-64 letters, digits, '.', '_' or '-'"))
		return
	}
	who := callerOf(c)
	token := randomHex(16) // 128 bits
	ctx := c.Request.Context()
	prev, _ := s.store.SessionIDOf(ctx, who.userID) // for its earlier previews, if replaced
	out, err := s.store.Start(c.Request.Context(), session.StartParams{
		UserID: who.userID, PatientID: req.PatientID, EncounterID: req.EncounterID,
		Token: token, SessionID: uuid.NewString(), Discard: req.Discard,
	})
	if err != nil {
		s.respondErr(c, err)
		return
	}
	if s.earlier != nil && prev != "" && prev != out.Session.SessionID {
		// Another patient's session ended: its earlier previews go now, not
		// at the sweep.
		s.earlier.forget(context.WithoutCancel(ctx), who.userID, prev)
	}
	if len(out.Discarded) > 0 {
		s.deleteObjects(c.Request.Context(), out.Discarded...)
		s.log.InfoContext(c.Request.Context(), "session.discarded", "user_id", who.userID, "images", len(out.Discarded))
	}
	qrURL := s.publicURL(c) + "/mobile?token=" + token
	png, err := qrcode.Encode(qrURL, qrcode.Medium, 320)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, startAnswer{
		SessionToken: token,
		UserID:       who.userID,
		ExpiresAt:    out.Token.CreatedAt.Add(s.store.Options().TokenTTL),
		QRCodeURL:    qrURL,
		QRCodeImage:  "data:image/png;base64," + base64.StdEncoding.EncodeToString(png),
		SessionID:    out.Session.SessionID,
		Reused:       out.Reused,
	})
}

// exchangeToken is the seeds' GET /api/session-tokens/:token, used once by
// the phone: it answers the seeds' fields plus the phone credential.
func (s *Server) exchangeToken(c *gin.Context) {
	ctx := c.Request.Context()
	ok, retry, err := s.redeemLimit.allow(ctx, c.ClientIP())
	if err != nil {
		s.respondErr(c, err)
		return
	}
	if !ok {
		c.Header("Retry-After", strconv.Itoa(int(retry.Round(time.Second)/time.Second)+1))
		c.JSON(http.StatusTooManyRequests, exchangeErrorAnswer{Error: "too many QR codes tried from this address; wait a minute", Code: "rate_limited"})
		return
	}
	token := c.Param("token")
	if !qrToken.MatchString(token) {
		c.JSON(http.StatusNotFound, exchangeErrorAnswer{Error: session.ErrTokenNotFound.Error(), Code: "token_invalid"})
		return
	}
	cred := phonePrefix + randomB64(32)
	t, err := s.store.Pair(ctx, token, cred, userAgentSummary(c.GetHeader("User-Agent")))
	if err != nil {
		if ae := domainErr(err); ae != nil {
			c.JSON(ae.status, exchangeErrorAnswer{Error: ae.msg, Code: ae.code})
			return
		}
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, exchangeAnswer{
		Valid:       true,
		UserID:      t.UserID,
		PatientID:   t.PatientID,
		EncounterID: t.EncounterID,
		SessionID:   t.SessionID,
		PhoneID:     session.PhoneID(cred),
		PhoneToken:  cred,
		ExpiresAt:   s.now().Add(s.store.Options().CredentialTTL).UTC(),
	})
}

type presignRequest struct {
	FileName      string `json:"fileName"`
	ContentType   string `json:"contentType"`
	ContentLength int64  `json:"contentLength"`
}

// presign is the seeds' POST presigned-url. The key is the server's choice
// under the caller's prefix, its extension from the allowed content type;
// the content type and length are signed, nothing else.
func (s *Server) presign(c *gin.Context) {
	var req presignRequest
	if err := decodeJSON(c, &req, false); err != nil {
		s.respondErr(c, err)
		return
	}
	ext, ok := allowedTypes[req.ContentType]
	if !ok {
		s.respondErr(c, clientErr(http.StatusUnsupportedMediaType, "unsupported_image_type", "contentType must be image/jpeg, image/png, image/webp or image/heic"))
		return
	}
	// contentLength is signed into the URL, so S3 refuses any other size;
	// the pages always send it. A client written for the seeds does not:
	// its URL takes any size, and recording refuses (and deletes) an object
	// over MAX_IMAGE_BYTES, so nothing oversize reaches a session.
	if req.ContentLength < 0 {
		s.respondErr(c, clientErr(http.StatusBadRequest, "invalid_content_length", "contentLength must be the photo's size in bytes"))
		return
	}
	if req.ContentLength > s.cfg.MaxImageBytes {
		s.respondErr(c, clientErr(http.StatusRequestEntityTooLarge, "too_large", "contentLength is over the photo size limit"))
		return
	}
	id := uuid.NewString()
	userID, ctx := c.Param("userId"), c.Request.Context()
	key := "temp/" + userID + "/" + id + "." + ext
	sessionID := callerOf(c).sessionID
	if sessionID == "" {
		var err error
		if sessionID, err = s.store.SessionIDOf(ctx, userID); err != nil {
			s.respondErr(c, err)
			return
		}
	}
	// Counted and kept for the sweep before the URL exists: an upload the
	// session never records is still deleted when the session ends.
	if err := s.store.TrackUpload(ctx, userID, sessionID, key, s.now().Add(s.cfg.UploadExpiry)); err != nil {
		s.respondErr(c, err)
		return
	}
	u, err := s.objects.PresignPut(ctx, key, req.ContentType, req.ContentLength, s.cfg.UploadExpiry)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, presignAnswer{
		UploadURL: u,
		S3Key:     key,
		ExpiresIn: int(s.cfg.UploadExpiry / time.Second),
		ImageID:   id,
		Headers:   uploadHeaders{ContentType: req.ContentType},
	})
}

type recordRequest struct {
	ImageID  string            `json:"imageId"`
	S3Key    string            `json:"s3Key"`
	Source   string            `json:"source"`
	Metadata *session.Metadata `json:"metadata"`
	// PatientID, when given, is the patient the desktop has open: the photo
	// is refused (409 patient_mismatch) if the session is another's.
	PatientID string `json:"patientId"`
	// SessionID, when a desktop gives it, is the session the photo was
	// taken in: a late retry after that session was replaced is refused
	// (410 session_changed), never added to the next one. A phone is bound
	// by its credential instead.
	SessionID string `json:"sessionId"`
}

// recordImage is the seeds' POST images, after checking the object really is
// the caller's photo: inside their prefix, present, within the size limit,
// and starting with the magic bytes of the type its key claims.
func (s *Server) recordImage(c *gin.Context) {
	var req recordRequest
	if err := decodeJSON(c, &req, false); err != nil {
		s.respondErr(c, err)
		return
	}
	userID := c.Param("userId")
	if !imageID.MatchString(req.ImageID) {
		s.respondErr(c, invalid("image_id", "imageId must be 1-64 letters, digits, '_' or '-'"))
		return
	}
	if req.Source != "mobile" && req.Source != "desktop" {
		s.respondErr(c, invalid("source", "source must be mobile or desktop"))
		return
	}
	who, err := boundTo(callerOf(c), req.SessionID)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	var meta session.Metadata
	if req.Metadata != nil {
		p, err := cleanMetadata(patchOf(*req.Metadata))
		if err != nil {
			s.respondErr(c, err)
			return
		}
		meta = applyPatch(meta, p)
	}
	contentType, kerr := checkKey(userID, req.S3Key)
	if kerr != nil {
		s.respondErr(c, kerr)
		return
	}
	ctx := c.Request.Context()
	info, err := s.verifyObject(ctx, req.S3Key, contentType)
	if err != nil {
		s.respondErr(c, s.deletedOr(ctx, userID, req, err))
		return
	}
	img := session.Image{
		ID: req.ImageID, S3Key: req.S3Key, Uploaded: true, Source: req.Source, CapturedAt: s.now().UTC(),
		Metadata: meta, ContentType: contentType, Size: info.Size, Status: session.ImageProcessing,
		Device: deviceSummary(c.GetHeader("User-Agent")),
	}
	bind := session.Binding{SessionID: who.sessionID, PatientID: req.PatientID, PhoneID: who.phoneID}
	sess, added, err := s.store.AddImageBound(ctx, userID, bind, img)
	if who.phone && errors.Is(err, session.ErrNotFound) {
		err = session.ErrSessionChanged // the phone's session has ended
	}
	if errors.Is(err, session.ErrImageDeleted) {
		// A late retry of a photo the GP deleted: its object may have
		// survived the delete (S3 failed then), so it goes again now.
		s.deleteObjects(ctx, session.Image{S3Key: req.S3Key})
		s.log.InfoContext(ctx, "image.record_after_delete", "user_id", userID, "image_id", req.ImageID)
	}
	if err != nil {
		s.respondErr(c, err)
		return
	}
	outcome := "added"
	if !added {
		outcome = "duplicate"
	}
	if bind.SessionID == "" {
		// Bound to its session, the record ended the upload's count itself.
		if err := s.store.UploadRecorded(ctx, userID, sess.SessionID, req.S3Key); err != nil {
			// It counts as outstanding until its URL expires: harmless.
			s.log.WarnContext(ctx, "upload.untracked", "user_id", userID, "err", err)
		}
	}
	s.metrics.recorded.WithLabelValues(outcome).Inc()
	s.log.InfoContext(ctx, "image.recorded", "user_id", userID, "image_id", req.ImageID, "outcome", outcome, "bytes", info.Size)
	c.JSON(http.StatusOK, recordAnswer{Success: true, ImageID: req.ImageID, Session: s.view(ctx, sess)})
}

// deletedOr is err, unless the object is missing because the GP deleted
// the photo: then ErrImageDeleted, so the phone drops the photo instead of
// uploading it again under a new id. Only the object the photo had counts:
// the tombstone holds its key.
func (s *Server) deletedOr(ctx context.Context, userID string, req recordRequest, err error) error {
	var ae *apiError
	if !errors.As(err, &ae) || ae.code != "object_missing" {
		return err
	}
	key, deleted, derr := s.store.Deleted(ctx, userID, req.ImageID)
	if derr != nil {
		s.log.WarnContext(ctx, "image.tombstone_unread", "user_id", userID, "err", derr)
		return err
	}
	if deleted && key == req.S3Key {
		return session.ErrImageDeleted
	}
	return err
}

// verifyObject checks the uploaded object in one ranged GET, which
// carries both its first bytes and its size.
func (s *Server) verifyObject(ctx context.Context, key, contentType string) (blob.Info, error) {
	info, head, err := s.objects.Sniff(ctx, key, 16)
	var refused interface{ HTTPStatusCode() int }
	switch {
	case errors.Is(err, blob.ErrNotFound):
		return blob.Info{}, clientErr(http.StatusUnprocessableEntity, "object_missing", "no uploaded object at s3Key: upload it with the presigned URL first")
	case errors.As(err, &refused) && refused.HTTPStatusCode() >= 400 && refused.HTTPStatusCode() < 500:
		// S3 will not hand the bytes over (a key it cannot decrypt, say):
		// the object is unusable, not the API broken.
		return blob.Info{}, clientErr(http.StatusUnprocessableEntity, "object_unreadable", "the uploaded object cannot be read: upload the photo again")
	case err != nil:
		return blob.Info{}, err
	case info.Size == 0:
		return blob.Info{}, clientErr(http.StatusUnprocessableEntity, "empty_object", "the uploaded object is empty: upload the photo again")
	case info.Size > s.cfg.MaxImageBytes:
		if derr := s.objects.Delete(ctx, key); derr != nil {
			s.log.WarnContext(ctx, "image.oversize_delete", "err", derr)
		}
		return blob.Info{}, clientErr(http.StatusUnprocessableEntity, "too_large", "the uploaded photo is over the size limit and was deleted")
	}
	if got := hygiene.Detect(head).ContentType(); got != contentType {
		return blob.Info{}, clientErr(http.StatusUnprocessableEntity, "not_an_image", "the uploaded object is not a "+strings.TrimPrefix(contentType, "image/")+" image")
	}
	return info, nil
}

type updateRequest struct {
	session.MetadataPatch
	Metadata *session.MetadataPatch `json:"metadata"`
}

// updateImage edits one photo's coding: body site, laterality, view, notes.
func (s *Server) updateImage(c *gin.Context) {
	var req updateRequest
	if err := decodeJSON(c, &req, false); err != nil {
		s.respondErr(c, err)
		return
	}
	p := req.MetadataPatch
	if req.Metadata != nil {
		p = *req.Metadata
	}
	p, aerr := cleanMetadata(p)
	if aerr != nil {
		s.respondErr(c, aerr)
		return
	}
	ctx := c.Request.Context()
	sess, err := s.store.UpdateMetadata(ctx, c.Param("userId"), callerOf(c).sessionID, c.Param("imageId"), p)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	img, _ := sess.Image(c.Param("imageId"))
	v := s.view(ctx, sess)
	vimg, _ := v.Image(img.ID)
	c.JSON(http.StatusOK, updateAnswer{Success: true, Image: vimg, Session: v})
}

// deleteImage removes one photo and its objects.
func (s *Server) deleteImage(c *gin.Context) {
	ctx := c.Request.Context()
	_, img, err := s.store.RemoveImage(ctx, c.Param("userId"), callerOf(c).sessionID, c.Param("imageId"))
	if err != nil {
		s.respondErr(c, err)
		return
	}
	s.deleteObjects(ctx, img)
	c.JSON(http.StatusOK, deleteAnswer{Success: true, ImageID: img.ID})
}

// getSession is the seeds' GET session; reading counts as activity.
func (s *Server) getSession(c *gin.Context) {
	ctx := c.Request.Context()
	sess, err := s.store.Get(ctx, c.Param("userId"))
	if err == nil && callerOf(c).phone && sess.SessionID != callerOf(c).sessionID {
		err = session.ErrSessionChanged
	}
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, s.view(ctx, sess))
}

type openPatientRequest struct {
	PatientID string `json:"patientId"`
}

// setOpenPatient is PUT open-patient: the desktop says which patient the
// practice system has open. While that is not the session's patient, the
// session takes no photo from anyone, phones included.
func (s *Server) setOpenPatient(c *gin.Context) {
	var req openPatientRequest
	if err := decodeJSON(c, &req, false); err != nil {
		s.respondErr(c, err)
		return
	}
	if callerOf(c).phone {
		s.respondErr(c, clientErr(http.StatusForbidden, "forbidden", "only the desktop knows which patient is open"))
		return
	}
	if !fhirID.MatchString(req.PatientID) {
		s.respondErr(c, invalid("patient_id", "patientId must be 1-64 letters, digits, '.', '_' or '-'"))
		return
	}
	sess, _, err := s.store.SetOpenPatient(c.Request.Context(), c.Param("userId"), req.PatientID)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, openPatientAnswer{PatientID: sess.PatientID, Held: sess.Held, Version: sess.Version})
}

type pendingRequest struct {
	Count *int `json:"count"`
}

// setPending is PUT pending: a phone says how many photos it still holds
// that the session has not recorded (waiting for a connection), so the
// desktop shows them as coming and asks before committing without them.
func (s *Server) setPending(c *gin.Context) {
	var req pendingRequest
	if err := decodeJSON(c, &req, false); err != nil {
		s.respondErr(c, err)
		return
	}
	who := callerOf(c)
	if !who.phone {
		s.respondErr(c, clientErr(http.StatusForbidden, "forbidden", "only a phone reports the photos it holds"))
		return
	}
	if req.Count == nil || *req.Count < 0 || *req.Count > 1000 {
		s.respondErr(c, invalid("count", "count must be a number from 0 to 1000"))
		return
	}
	sess, _, err := s.store.SetPending(c.Request.Context(), c.Param("userId"), who.sessionID, who.phoneID, *req.Count)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, pendingAnswer{Pending: *req.Count, PendingPhotos: sess.PendingPhotos(), Version: sess.Version})
}

// commitRequest is POST commit's optional body.
type commitRequest struct {
	// Resend names photos that need checking or are in conflict which the
	// GP, having checked the record, wants sent again.
	Resend []string `json:"resend"`
	// SessionID, from a desktop, is the session it shows (see boundTo).
	SessionID string `json:"sessionId"`
}

// boundTo is who with the session a desktop names: a change a desktop
// makes for the session it shows fails with session_changed once another
// desktop has replaced that session (perhaps for another patient), as a
// phone's does through its credential. A desktop that names none acts on
// the current session.
func boundTo(who caller, sessionID string) (caller, error) {
	if sessionID == "" || who.phone {
		return who, nil
	}
	if !imageID.MatchString(sessionID) {
		return who, invalid("session_id", "sessionId must be the id of a session")
	}
	who.sessionID = sessionID
	return who, nil
}

// commit is the seeds' POST commit. The work is a JetStream job for the
// committer; by default this waits for its outcome and answers the seeds'
// shape, with Prefer: respond-async (or when the wait runs out) it answers 202.
func (s *Server) commit(c *gin.Context) {
	var req commitRequest
	if err := decodeJSON(c, &req, true); err != nil {
		s.respondErr(c, err)
		return
	}
	for _, id := range req.Resend {
		if !imageID.MatchString(id) {
			s.respondErr(c, invalid("resend", "resend must list image ids"))
			return
		}
	}
	ctx := c.Request.Context()
	userID := c.Param("userId")
	commitID := uuid.NewString()
	async := strings.Contains(strings.ToLower(c.GetHeader("Prefer")), "respond-async")
	var outcome <-chan session.CommitEvent
	if !async {
		var cancel func()
		outcome, cancel = s.waiter.Wait(commitID)
		defer cancel()
	}
	who, err := boundTo(callerOf(c), req.SessionID)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	sess, err := s.store.BeginCommit(ctx, userID, who.sessionID, commitID, req.Resend...)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	s.log.InfoContext(ctx, "commit.requested", "user_id", userID, "commit_id", commitID, "images", len(sess.Images))
	accepted := func() {
		s.metrics.commits.WithLabelValues("accepted").Inc()
		c.Header("Location", "/api/users/"+userID+"/commit")
		c.JSON(http.StatusAccepted, commitAcceptedAnswer{
			Status: string(session.CommitInProgress), CommitID: commitID, ImageCount: len(sess.Images),
			Message: "commit accepted; follow its progress at GET /api/users/" + userID + "/commit",
		})
	}
	if async {
		accepted()
		return
	}
	timer := time.NewTimer(s.cfg.CommitWait)
	defer timer.Stop()
	select {
	case ev := <-outcome:
		if ev.Success {
			s.metrics.commits.WithLabelValues("succeeded").Inc()
			c.JSON(http.StatusOK, commitAnswer{
				Success: true, MediaResourceIDs: ev.MediaResourceIDs, Message: ev.Message,
				ImageCount: len(ev.MediaResourceIDs), CommitID: commitID,
			})
			return
		}
		s.metrics.commits.WithLabelValues("failed").Inc()
		// ALEX has no delete: photos already in the record stay there, so
		// partialSuccess says whether some are.
		c.JSON(http.StatusBadGateway, commitFailedAnswer{
			Error: "Commit failed: " + ev.Message, Code: "commit_failed", PartialSuccess: ev.Done > 0,
			InRecord: ev.Done, ImageCount: ev.Total, Stopped: ev.Stopped,
			Errors: ev.Errors, Orphans: ev.Orphans, CommitID: commitID,
		})
	case <-timer.C:
		accepted()
	case <-ctx.Done():
	}
}

// stopCommit is the GP no longer waiting for a commit that ALEX keeps
// failing: the session becomes editable again, and every photo already in
// the record stays known as in the record.
func (s *Server) stopCommit(c *gin.Context) {
	var req struct {
		// SessionID, when given, is the session the desktop shows: a stale
		// tab never stops the commit of the session that replaced it.
		SessionID string `json:"sessionId"`
	}
	if err := decodeJSON(c, &req, true); err != nil {
		s.respondErr(c, err)
		return
	}
	who, err := boundTo(callerOf(c), req.SessionID)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	ctx := c.Request.Context()
	sess, err := s.store.StopCommit(ctx, c.Param("userId"), who.sessionID)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	s.log.InfoContext(ctx, "commit.stopped", "user_id", c.Param("userId"), "commit_id", sess.CommitID, "in_record", sess.Commit.Done)
	c.JSON(http.StatusOK, stopCommitAnswer{
		Success: true, CommitStatus: sess.CommitStatus, CommitID: sess.CommitID,
		InRecord: sess.Commit.Done, ImageCount: len(sess.Images), Message: sess.Commit.Message, Session: s.view(ctx, sess),
	})
}

// commitStatus reads where the last commit is.
func (s *Server) commitStatus(c *gin.Context) {
	sess, err := s.store.Peek(c.Request.Context(), c.Param("userId"))
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, commitStatusAnswer{CommitStatus: sess.CommitStatus, CommitID: sess.CommitID, Commit: sess.Commit})
}

// realtimeToken gives the browser a token for its own channel only, never
// outliving the session: the desktop's covers the user's channel, a phone's
// only its session's channel, for minutes, and only while the phone is
// still paired (resolve checks that on every call).
func (s *Server) realtimeToken(c *gin.Context) {
	ctx := c.Request.Context()
	who := callerOf(c)
	left, err := s.store.ExpiresIn(ctx, who.userID)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	now := s.now()
	tok, err := s.cfg.Realtime.Issue(realtime.Grant{UserID: who.userID, SessionID: who.sessionID, PhoneID: who.phoneID}, now.Add(left), now)
	if errors.Is(err, realtime.ErrSessionEnded) {
		err = session.ErrNotFound
	}
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, tok)
}

// listPhones is GET /api/users/:userId/phones: the phones paired with the
// current session, for the desktop to show and remove.
func (s *Server) listPhones(c *gin.Context) {
	sess, err := s.store.Peek(c.Request.Context(), c.Param("userId"))
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, phonesAnswer{SessionID: sess.SessionID, Phones: sess.Phones})
}

// removePhone is DELETE /api/users/:userId/phones/:phoneId: the phone's
// credential stops working at once, so do its token renewals, and its
// built-in SSE stream ends. ?sessionId names the session the desktop shows:
// a stale tab never removes a phone paired with the session that replaced it.
func (s *Server) removePhone(c *gin.Context) {
	who, err := boundTo(callerOf(c), c.Query("sessionId"))
	if err != nil {
		s.respondErr(c, err)
		return
	}
	ctx := c.Request.Context()
	sess, err := s.store.RemovePhone(ctx, c.Param("userId"), who.sessionID, c.Param("phoneId"))
	if err != nil {
		s.respondErr(c, err)
		return
	}
	s.log.InfoContext(ctx, "phone.removed", "user_id", sess.UserID, "phone_id", c.Param("phoneId"))
	c.JSON(http.StatusOK, phoneRemovedAnswer{Success: true, PhoneID: c.Param("phoneId"), Phones: sess.Phones})
}

// devToken issues a desktop token for any user id (local stack only).
func (s *Server) devToken(c *gin.Context) {
	userID := c.Query("userId")
	if !events.ValidUserID(userID) {
		s.respondErr(c, invalid("user_id", "userId must be 1-64 letters, digits, '_' or '-'"))
		return
	}
	tok, err := s.cfg.DevIssuer.Token(userID, 12*time.Hour)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.JSON(http.StatusOK, devTokenAnswer{Token: tok, UserID: userID})
}

// view is the session as a browser sees it, with short-lived read URLs, and
// held rather than which other patient is open (a phone is not told).
func (s *Server) view(ctx context.Context, sess session.Session) sessionView {
	sess.OpenPatientID = ""
	imgs := make(session.List[session.Image], len(sess.Images))
	for i, im := range sess.Images {
		im.S3URL = s.presignGet(ctx, im.S3Key)
		im.PreviewURL = s.presignGet(ctx, im.PreviewKey)
		im.ViewerURL = s.presignGet(ctx, im.ViewerKey)
		imgs[i] = im
	}
	sess.Images = imgs
	phones := []session.Phone(sess.Phones)
	if phones == nil {
		phones = []session.Phone{}
	}
	return sessionView{Session: sess, Images: imgs, Phones: phones}
}

func (s *Server) presignGet(ctx context.Context, key string) string {
	if key == "" {
		return ""
	}
	u, err := s.objects.PresignGet(ctx, key, s.cfg.ViewExpiry)
	if err != nil {
		s.log.WarnContext(ctx, "presign.get", "err", err)
		return ""
	}
	return u
}

// deleteObjects removes photos' objects, best effort: the bucket's lifecycle
// rule on temp/ removes anything left.
func (s *Server) deleteObjects(ctx context.Context, imgs ...session.Image) {
	var keys []string
	for _, im := range imgs {
		keys = append(keys, im.S3Key, im.PreviewKey, im.ViewerKey, im.CleanKey)
	}
	if err := s.objects.Delete(context.WithoutCancel(ctx), keys...); err != nil {
		s.log.WarnContext(ctx, "objects.delete", "err", err)
	}
}

// publicURL is where phones reach the pages: PUBLIC_URL, or else the origin
// the desktop used (behind a proxy, the scheme it names in
// X-Forwarded-Proto).
func (s *Server) publicURL(c *gin.Context) string {
	if s.cfg.PublicURL != "" {
		return s.cfg.PublicURL
	}
	scheme := "http"
	if c.Request.TLS != nil || strings.EqualFold(c.GetHeader("X-Forwarded-Proto"), "https") {
		scheme = "https"
	}
	return scheme + "://" + c.Request.Host
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomB64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// userAgentSummary keeps enough of the phone's user agent to show which
// device paired, and no more.
func userAgentSummary(ua string) string {
	if len(ua) > 120 {
		ua = ua[:120]
	}
	return ua
}
