package api

import (
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

var (
	// FHIR ids are [A-Za-z0-9-.]{1,64}; Medtech's ids also use '_'.
	fhirID  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	imageID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	snomed  = regexp.MustCompile(`^[0-9]{6,18}$`)
	qrToken = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)
)

// allowedTypes maps each accepted photo content type to the extension its
// key gets; the client's file name is never used.
var allowedTypes = map[string]string{
	"image/jpeg": "jpg",
	"image/png":  "png",
	"image/webp": "webp",
	"image/heic": "heic",
}

func typeForExt(ext string) string {
	for t, e := range allowedTypes {
		if e == ext {
			return t
		}
	}
	return ""
}

// validLaterality and validView accept the empty value (clearing the field)
// and the codes of the one vocabulary in pkg/fhir.
func validLaterality(v string) bool {
	_, ok := fhir.LateralityTerm(v)
	return v == "" || ok && v == strings.ToLower(v)
}

func validView(v string) bool {
	_, ok := fhir.ViewTerm(v)
	return v == "" || ok && v == strings.ToLower(v)
}

func invalid(field, why string) *apiError {
	return clientErr(http.StatusBadRequest, "invalid_"+field, why)
}

// validMetadata checks a metadata change; nil fields are not changing.
func validMetadata(p session.MetadataPatch) *apiError {
	check := func(v *string, max int, field string) *apiError {
		if v != nil && (utf8.RuneCountInString(*v) > max || !utf8.ValidString(*v)) {
			return clientErr(http.StatusBadRequest, "invalid_metadata", field+" is too long")
		}
		return nil
	}
	if e := check(p.BodySite, 100, "bodySite"); e != nil {
		return e
	}
	if e := check(p.BodySiteDisplay, 200, "bodySiteDisplay"); e != nil {
		return e
	}
	if e := check(p.Notes, session.MaxNotes, "notes"); e != nil {
		return e
	}
	if p.Laterality != nil && !validLaterality(*p.Laterality) {
		return clientErr(http.StatusBadRequest, "invalid_metadata", "laterality must be one of "+strings.Join(fhir.Codes(fhir.Lateralities), ", "))
	}
	if p.ViewType != nil && !validView(*p.ViewType) {
		return clientErr(http.StatusBadRequest, "invalid_metadata", "viewType must be one of "+strings.Join(fhir.Codes(fhir.Views), ", "))
	}
	return nil
}

// withDisplay fills the display text of a known SNOMED body site the client
// did not name.
func withDisplay(p session.MetadataPatch) session.MetadataPatch {
	if p.BodySite != nil && snomed.MatchString(*p.BodySite) && p.BodySiteDisplay == nil {
		if d, ok := bodySiteDisplay[*p.BodySite]; ok {
			p.BodySiteDisplay = &d
		}
	}
	return p
}

// patchOf turns a full metadata object (as recorded with an image) into a
// patch that sets every non-empty field.
func patchOf(m session.Metadata) session.MetadataPatch {
	set := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	return session.MetadataPatch{BodySite: set(m.BodySite), BodySiteDisplay: set(m.BodySiteDisplay),
		Laterality: set(m.Laterality), ViewType: set(m.ViewType), Notes: set(m.Notes)}
}

func applyPatch(m session.Metadata, p session.MetadataPatch) session.Metadata {
	if p.BodySite != nil {
		m.BodySite = *p.BodySite
	}
	if p.BodySiteDisplay != nil {
		m.BodySiteDisplay = *p.BodySiteDisplay
	}
	if p.Laterality != nil {
		m.Laterality = *p.Laterality
	}
	if p.ViewType != nil {
		m.ViewType = *p.ViewType
	}
	if p.Notes != nil {
		m.Notes = *p.Notes
	}
	return m
}

// keyPattern is the only shape of key a user may record: temp/{userId}/{id}.{ext}.
var keyPattern = regexp.MustCompile(`^temp/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9-]{1,64})\.(jpg|png|webp|heic)$`)

// checkKey returns the content type the key's extension stands for, or an
// error: 403 for a key under another user's prefix, 400 for any other shape.
func checkKey(userID, key string) (string, *apiError) {
	m := keyPattern.FindStringSubmatch(key)
	if m == nil {
		if strings.HasPrefix(key, "temp/"+userID+"/") {
			return "", invalid("s3_key", "s3Key is not a key this API issued")
		}
		return "", clientErr(http.StatusForbidden, "key_outside_prefix", "s3Key is outside this user's upload area")
	}
	if m[1] != userID {
		return "", clientErr(http.StatusForbidden, "key_outside_prefix", "s3Key is outside this user's upload area")
	}
	return typeForExt(m[3]), nil
}
