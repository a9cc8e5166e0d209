package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/clinicalimages/clinimg/pkg/jwtauth"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// caller is who made a request: a desktop user (verified JWT) or a phone
// holding a credential for one user's one session.
type caller struct {
	userID    string
	phone     bool
	sessionID string // the phone's session; empty for the desktop
	phoneID   string // the phone's id in its session; empty for the desktop
}

const callerKey = "clinimg.caller"

// phonePrefix marks phone credentials, which are opaque, apart from JWTs.
const phonePrefix = "ph_"

// authenticate resolves the bearer token into a caller or answers 401.
func (s *Server) authenticate(c *gin.Context) {
	token, ok := bearer(c.GetHeader("Authorization"))
	if !ok {
		s.respondErr(c, errUnauthenticated)
		return
	}
	who, err := s.resolve(c.Request.Context(), token)
	if err != nil {
		s.respondErr(c, err)
		return
	}
	c.Set(callerKey, who)
	// Every change this request makes says who made it (the audit trail).
	actor := session.ActorDesktop
	if who.phone {
		actor = session.ActorPhone
	}
	c.Request = c.Request.WithContext(session.WithActor(c.Request.Context(), actor))
	c.Next()
}

func (s *Server) resolve(ctx context.Context, token string) (caller, error) {
	if strings.HasPrefix(token, phonePrefix) {
		cred, err := s.store.Credential(ctx, token)
		if errors.Is(err, session.ErrTokenNotFound) {
			return caller{}, errUnauthenticated
		}
		if err != nil {
			return caller{}, err
		}
		return caller{userID: cred.UserID, phone: true, sessionID: cred.SessionID, phoneID: cred.PhoneID}, nil
	}
	sub, err := s.verifier.Verify(ctx, token)
	if errors.Is(err, jwtauth.ErrKeysUnavailable) {
		s.log.WarnContext(ctx, "auth.keys_unavailable")
		return caller{}, errAuthUnavailable
	}
	if err != nil {
		return caller{}, errUnauthenticated
	}
	return caller{userID: sub}, nil
}

// requirePaired admits a phone only while its credential's session is the
// user's current one and the desktop has not removed the phone: the
// credential ends with its session. While the session is held for another
// patient, a phone only reads (whileHeld aside). Desktop callers pass.
func (s *Server) requirePaired(c *gin.Context) {
	who := callerOf(c)
	if !who.phone {
		c.Next()
		return
	}
	sess, err := s.store.Peek(c.Request.Context(), who.userID)
	switch {
	case errors.Is(err, session.ErrNotFound) || (err == nil && sess.SessionID != who.sessionID):
		s.respondErr(c, session.ErrSessionChanged)
		return
	case err != nil:
		s.respondErr(c, err)
		return
	}
	if _, ok := sess.PhoneByID(who.phoneID); !ok {
		s.respondErr(c, session.ErrPhoneRemoved)
		return
	}
	if sess.Held && c.Request.Method != http.MethodGet && !whileHeld[c.FullPath()] {
		// Another patient is open: the phone keeps its photos waiting and
		// changes nothing of this patient's session (it is not told who).
		s.respondErr(c, session.ErrPatientMismatch)
		return
	}
	c.Next()
}

// whileHeld are the changes a phone still makes while the session is held:
// reporting the photos it holds and uploading one to keep waiting.
var whileHeld = map[string]bool{
	"/api/users/:userId/pending":       true,
	"/api/users/:userId/presigned-url": true,
}

// requireUser checks the :userId of the path against the caller: no one acts
// on another user's session.
func (s *Server) requireUser(c *gin.Context) {
	if callerOf(c).userID != c.Param("userId") {
		s.respondErr(c, errForbidden)
		return
	}
	c.Next()
}

// requireDesktop admits only desktop callers.
func (s *Server) requireDesktop(c *gin.Context) {
	if callerOf(c).phone {
		s.respondErr(c, clientErr(http.StatusForbidden, "forbidden", "only the desktop can do this"))
		return
	}
	c.Next()
}

func callerOf(c *gin.Context) caller {
	v, _ := c.Get(callerKey)
	who, _ := v.(caller)
	return who
}

func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
