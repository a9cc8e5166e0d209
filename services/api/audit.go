package api

import (
	"bytes"
	"errors"
	"net/http"
	"regexp"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/clinicalimages/clinimg/pkg/audit"
)

// getAudit is GET /api/users/:userId/sessions/:sessionId/audit: the
// session's chain of custody, kept in the bucket beyond the session, for
// the GP who owns it. JSON by default; CSV with ?format=csv or
// Accept: text/csv, for export.
func (s *Server) getAudit(c *gin.Context) {
	sessionID := c.Param("sessionId")
	if !audit.ValidSessionID(sessionID) {
		s.respondErr(c, invalid("session_id", "sessionId must be 1-64 letters, digits, '_' or '-'"))
		return
	}
	format := c.Query("format")
	if format == "" && strings.Contains(c.GetHeader("Accept"), "text/csv") {
		format = "csv"
	}
	if format != "" && format != "csv" && format != "json" {
		s.respondErr(c, invalid("format", "format must be json or csv"))
		return
	}
	if s.audit == nil {
		s.respondErr(c, clientErr(http.StatusNotFound, "audit_not_found", "no audit trail is kept here"))
		return
	}
	recs, err := s.audit.Read(c.Request.Context(), c.Param("userId"), sessionID)
	if errors.Is(err, audit.ErrNotFound) {
		s.respondErr(c, clientErr(http.StatusNotFound, "audit_not_found", "no audit trail for this session"))
		return
	}
	if err != nil {
		s.respondErr(c, err)
		return
	}
	if recs == nil {
		recs = []audit.Record{}
	}
	if format == "csv" {
		var buf bytes.Buffer
		if err := audit.WriteCSV(&buf, recs); err != nil {
			s.respondErr(c, err)
			return
		}
		c.Header("Content-Disposition", `attachment; filename="audit-`+sessionID+`.csv"`)
		c.Data(http.StatusOK, "text/csv; charset=utf-8", buf.Bytes())
		return
	}
	c.JSON(http.StatusOK, auditAnswer{SessionID: sessionID, Records: recs})
}

var (
	uaIPhone   = regexp.MustCompile(`iPhone OS (\d+)[_.](\d+)`)
	uaIPad     = regexp.MustCompile(`iPad; CPU OS (\d+)[_.](\d+)`)
	uaAndroid  = regexp.MustCompile(`Android (\d+(?:\.\d+)?)(?:; ([^;)]{1,40}))?`)
	uaWindows  = regexp.MustCompile(`Windows NT (\d+\.\d+)`)
	uaMac      = regexp.MustCompile(`Mac OS X (\d+)[_.](\d+)`)
	uaBrowsers = []struct {
		name string
		re   *regexp.Regexp
	}{
		{"Edge", regexp.MustCompile(`Edg(?:e|A|iOS)?/(\d+)`)},
		{"Samsung Internet", regexp.MustCompile(`SamsungBrowser/(\d+)`)},
		{"Firefox", regexp.MustCompile(`(?:Firefox|FxiOS)/(\d+)`)},
		{"Chrome", regexp.MustCompile(`(?:Chrome|CriOS)/(\d+)`)},
		{"Safari", regexp.MustCompile(`Version/(\d+).*Safari/`)},
	}
)

// deviceSummary is what the audit trail keeps of the device that recorded
// a photo: its system and browser with their major versions, read from the
// user agent ("iPhone, iOS 18.1, Safari 18"), or "unknown device".
func deviceSummary(ua string) string {
	if len(ua) > 512 {
		ua = ua[:512]
	}
	var parts []string
	switch {
	case uaIPhone.MatchString(ua):
		m := uaIPhone.FindStringSubmatch(ua)
		parts = append(parts, "iPhone", "iOS "+m[1]+"."+m[2])
	case uaIPad.MatchString(ua):
		m := uaIPad.FindStringSubmatch(ua)
		parts = append(parts, "iPad", "iPadOS "+m[1]+"."+m[2])
	case uaAndroid.MatchString(ua):
		m := uaAndroid.FindStringSubmatch(ua)
		if model := strings.TrimSpace(m[2]); model != "" && model != "K" && !strings.HasPrefix(model, "wv") {
			parts = append(parts, model)
		}
		parts = append(parts, "Android "+m[1])
	case uaWindows.MatchString(ua):
		parts = append(parts, "Windows NT "+uaWindows.FindStringSubmatch(ua)[1])
	case uaMac.MatchString(ua):
		m := uaMac.FindStringSubmatch(ua)
		parts = append(parts, "macOS "+m[1]+"."+m[2])
	case strings.Contains(ua, "Linux"):
		parts = append(parts, "Linux")
	}
	for _, b := range uaBrowsers {
		if m := b.re.FindStringSubmatch(ua); m != nil {
			parts = append(parts, b.name+" "+m[1])
			break
		}
	}
	if strings.Contains(ua, "HeadlessChrome") {
		parts = append(parts, "headless")
	}
	if len(parts) == 0 {
		return "unknown device"
	}
	return strings.Join(parts, ", ")
}
