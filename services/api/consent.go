package api

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/clinicalimages/clinimg/pkg/session"
)

type consentRequest struct {
	Method   string   `json:"method"`
	Reason   string   `json:"reason"`
	Purposes []string `json:"purposes"`
	// SessionID, from a desktop, is the session it shows: consent for one
	// patient never lands on a session another desktop has since started.
	SessionID string `json:"sessionId"`
}

// setConsent is PUT consent: the desktop or a paired phone records how the
// patient consented to the photos and what they may be used for. Who
// recorded it comes from the credential, never the body; it can change
// until the commit.
func (s *Server) setConsent(c *gin.Context) {
	var req consentRequest
	if err := decodeJSON(c, &req, false); err != nil {
		s.respondErr(c, err)
		return
	}
	who, err := boundTo(callerOf(c), req.SessionID)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	rec := session.Consent{Method: req.Method, Reason: req.Reason, Purposes: req.Purposes, RecordedBy: who.userID, Via: "desktop"}
	if who.phone {
		rec.RecordedBy, rec.Via = "phone "+who.phoneID, "phone"
	}
	ctx := c.Request.Context()
	sess, err := s.store.SetConsent(ctx, c.Param("userId"), who.sessionID, rec)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	s.log.InfoContext(ctx, "consent.recorded", "user_id", sess.UserID, "via", rec.Via, "method", sess.Consent.Method)
	c.JSON(http.StatusOK, consentAnswer{Consent: sess.Consent, Version: sess.Version})
}
