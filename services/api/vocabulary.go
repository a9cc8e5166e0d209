package api

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// vocabulary is what both pages offer and check, from the one place each is
// defined: views and sides (pkg/fhir, which codes them in the Media), and the
// limits (pkg/session and this API's configuration).
type vocabulary struct {
	Views        []fhir.Term  `json:"views"`
	Lateralities []fhir.Term  `json:"lateralities"`
	Limits       limits       `json:"limits"`
	Consent      consentTerms `json:"consent"`
}

// consentTerms is the consent vocabulary (pkg/session), and whether a commit
// needs a consent record here (CONSENT_REQUIRED).
type consentTerms struct {
	Methods  []session.Term `json:"methods"`
	Reasons  []session.Term `json:"reasons"`
	Purposes []session.Term `json:"purposes"`
	Required bool           `json:"required"`
}

type limits struct {
	MaxImages     int    `json:"maxImages"`
	WarnImages    int    `json:"warnImages"`
	MaxMessage    string `json:"maxMessage"`
	MaxNotes      int    `json:"maxNotes"`
	MaxImageBytes int64  `json:"maxImageBytes"`
}

// getVocabulary is GET /api/vocabulary.
func (s *Server) getVocabulary(c *gin.Context) {
	c.JSON(http.StatusOK, vocabulary{
		Views:        fhir.Views,
		Lateralities: fhir.Lateralities,
		Limits: limits{
			MaxImages:     s.cfg.MaxImages,
			WarnImages:    min(session.WarnImages, s.cfg.MaxImages),
			MaxMessage:    session.CapMessage(s.cfg.MaxImages),
			MaxNotes:      session.MaxNotes,
			MaxImageBytes: s.cfg.MaxImageBytes,
		},
		Consent: consentTerms{Methods: session.ConsentMethods, Reasons: session.ConsentReasons,
			Purposes: session.ConsentPurposes, Required: s.cfg.ConsentRequired},
	})
}

// getBodySites is GET /api/body-sites, ranked for ?q= when given.
func (s *Server) getBodySites(c *gin.Context) {
	c.JSON(http.StatusOK, searchBodySites(c.Query("q")))
}
