package api

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

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

// withDisplay derives the body site's display text from its code, whatever
// the client sent, so the two screens and the record never disagree: a
// SNOMED code of the vocabulary gets its display, free text (or clearing the
// site) gets none, and a display sent without a site is dropped. A SNOMED
// code outside the vocabulary has no display to derive and is refused.
func withDisplay(p session.MetadataPatch) (session.MetadataPatch, *apiError) {
	p.BodySiteDisplay = nil
	if p.BodySite == nil {
		return p, nil
	}
	d := ""
	if snomed.MatchString(*p.BodySite) {
		var ok bool
		if d, ok = bodySiteDisplay[*p.BodySite]; !ok {
			return p, clientErr(http.StatusBadRequest, "unknown_body_site", "bodySite is not a SNOMED code of GET /api/vocabulary")
		}
	}
	p.BodySiteDisplay = &d
	return p, nil
}

// bidiControls are the characters that reorder how the text around them is
// displayed (embeddings, overrides, isolates): a note holding one can read
// differently in the record than it was typed.
var bidiControls = map[rune]string{
	0x202A: "LEFT-TO-RIGHT EMBEDDING", 0x202B: "RIGHT-TO-LEFT EMBEDDING", 0x202C: "POP DIRECTIONAL FORMATTING",
	0x202D: "LEFT-TO-RIGHT OVERRIDE", 0x202E: "RIGHT-TO-LEFT OVERRIDE",
	0x2066: "LEFT-TO-RIGHT ISOLATE", 0x2067: "RIGHT-TO-LEFT ISOLATE", 0x2068: "FIRST STRONG ISOLATE",
	0x2069: "POP DIRECTIONAL ISOLATE",
}

// cleanText checks one free-text field and returns it normalised to NFC:
// control characters other than newline and tab, and bidi controls, are
// refused with a 400 naming the character and where it is.
func cleanText(field string, v *string) (*string, *apiError) {
	if v == nil {
		return nil, nil
	}
	if !utf8.ValidString(*v) {
		return nil, clientErr(http.StatusBadRequest, "invalid_text", field+" is not valid UTF-8")
	}
	i := 0
	for _, r := range *v {
		i++
		if name, ok := bidiControls[r]; ok {
			return nil, clientErr(http.StatusBadRequest, "invalid_text",
				fmt.Sprintf("%s contains U+%04X %s (character %d): bidi controls are not allowed", field, r, name, i))
		}
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return nil, clientErr(http.StatusBadRequest, "invalid_text",
				fmt.Sprintf("%s contains control character U+%04X (character %d): only newline and tab are allowed", field, r, i))
		}
	}
	n := norm.NFC.String(*v)
	return &n, nil
}

// cleanMetadata checks and normalises p's free text and derives its body
// site display; see cleanText and withDisplay.
func cleanMetadata(p session.MetadataPatch) (session.MetadataPatch, *apiError) {
	var err *apiError
	if p.BodySite, err = cleanText("bodySite", p.BodySite); err != nil {
		return p, err
	}
	if p.Notes, err = cleanText("notes", p.Notes); err != nil {
		return p, err
	}
	if p, err = withDisplay(p); err != nil {
		return p, err
	}
	return p, validMetadata(p)
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
