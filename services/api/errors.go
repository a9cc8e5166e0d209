package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/clinicalimages/clinimg/pkg/ops"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// apiError is a client-facing error: a status, a stable code, a message,
// and for some errors a count of photos.
type apiError struct {
	status int
	code   string
	msg    string
	count  *int
}

func (e *apiError) Error() string { return e.msg }

func clientErr(status int, code, msg string) *apiError {
	return &apiError{status: status, code: code, msg: msg}
}

// Client errors raised by the handlers themselves.
var (
	errUnauthenticated = clientErr(http.StatusUnauthorized, "unauthenticated", "a valid bearer token is required")
	errAuthUnavailable = clientErr(http.StatusServiceUnavailable, "auth_unavailable", "the identity provider's keys cannot be fetched; try again shortly")
	errForbidden       = clientErr(http.StatusForbidden, "forbidden", "this credential cannot act for that user")
	errBodyTooLarge    = clientErr(http.StatusRequestEntityTooLarge, "body_too_large", "request body too large")
	errContentType     = clientErr(http.StatusUnsupportedMediaType, "unsupported_media_type", "send application/json")
)

// respondErr writes the JSON error body for err. Domain errors map to their
// status; anything unknown is a 500 whose details go to the log only.
func (s *Server) respondErr(c *gin.Context, err error) {
	var ae *apiError
	var unc *session.UncommittedError
	var rej *session.RejectedImagesError
	var badConsent *session.ErrBadConsent
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &badConsent):
		ae = clientErr(http.StatusBadRequest, "invalid_consent", badConsent.Msg)
	case errors.As(err, &unc):
		ae = &apiError{status: http.StatusConflict, code: "uncommitted_images", msg: unc.Error(), count: &unc.N}
	case errors.As(err, &rej):
		ae = &apiError{status: http.StatusConflict, code: "rejected_images", msg: rej.Error(), count: &rej.N}
	case errors.Is(err, session.ErrCapReached):
		ae = clientErr(http.StatusBadRequest, "image_limit", session.CapMessage(s.cfg.MaxImages))
	default:
		ae = domainErr(err)
	}
	if ae == nil && errors.Is(err, context.Canceled) && c.Request.Context().Err() != nil {
		// The client went away mid-request: nothing to answer, nothing wrong.
		s.log.DebugContext(c.Request.Context(), "api.client_gone", "route", c.FullPath())
		c.AbortWithStatus(499)
		return
	}
	if ae == nil && ops.Unavailable(c.Request.Context(), err) {
		// Redis, NATS or S3 is down or not answering: the client may retry.
		s.log.WarnContext(c.Request.Context(), "api.dependency_unavailable", "route", c.FullPath(), "err", err)
		c.Header("Retry-After", "1")
		ae = clientErr(http.StatusServiceUnavailable, "unavailable", "a service the API depends on is unavailable; try again shortly")
	}
	if ae == nil {
		s.log.ErrorContext(c.Request.Context(), "api.internal_error", "route", c.FullPath(), "err", err)
		ae = clientErr(http.StatusInternalServerError, "internal", "internal error")
	}
	c.AbortWithStatusJSON(ae.status, errorAnswer{Error: ae.msg, Code: ae.code, Count: ae.count})
}

func domainErr(err error) *apiError {
	for _, m := range []struct {
		err    error
		status int
		code   string
	}{
		{session.ErrNotFound, http.StatusNotFound, "session_not_found"},
		{session.ErrTokenNotFound, http.StatusNotFound, "token_invalid"},
		{session.ErrTokenUsed, http.StatusGone, "token_used"},
		{session.ErrTokenRevoked, http.StatusGone, "token_revoked"},
		{session.ErrPhoneLimit, http.StatusConflict, "phone_limit"},
		{session.ErrUploadLimit, http.StatusTooManyRequests, "upload_limit"},
		{session.ErrPhoneNotFound, http.StatusNotFound, "phone_not_found"},
		{session.ErrPhoneRemoved, http.StatusGone, "phone_removed"},
		{session.ErrSessionChanged, http.StatusGone, "session_changed"},
		{session.ErrImageNotFound, http.StatusNotFound, "image_not_found"},
		{session.ErrImageIDConflict, http.StatusConflict, "image_id_conflict"},
		{session.ErrImageDeleted, http.StatusGone, "image_deleted"},
		{session.ErrPatientMismatch, http.StatusConflict, "patient_mismatch"},
		{session.ErrCommitInProgress, http.StatusConflict, "commit_in_progress"},
		{session.ErrCommitted, http.StatusConflict, "committed"},
		{session.ErrNothingToCommit, http.StatusBadRequest, "nothing_to_commit"},
		{session.ErrInRecord, http.StatusConflict, "in_record"},
		{session.ErrMaybeInRecord, http.StatusConflict, "maybe_in_record"},
		{session.ErrNoCommit, http.StatusConflict, "no_commit"},
		{session.ErrNotResendable, http.StatusConflict, "not_resendable"},
		{session.ErrConsentRequired, http.StatusConflict, "consent_required"},
	} {
		if errors.Is(err, m.err) {
			return clientErr(m.status, m.code, m.err.Error())
		}
	}
	return nil
}
