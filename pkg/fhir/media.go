// Package fhir is the small part of FHIR R4 this project speaks: the Media
// resource a clinical photo becomes, its coding (body site, laterality, view),
// a streaming encoder that base64-encodes the photo on its way to the server,
// and a client for Medtech's ALEX API (OAuth2 client credentials, mt-* headers,
// tolerant error parsing).
package fhir

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Code systems and identifiers used in the Media this project writes.
const (
	SNOMED           = "http://snomed.info/sct"
	MediaTypeSystem  = "http://terminology.hl7.org/CodeSystem/media-type"
	DICOMSystem      = "http://dicom.nema.org/resources/ontology/DCM"
	NHISystem        = "https://standards.digital.health.nz/ns/nhi-id"
	DefaultImageIDNS = "https://clinicalimages.nz/ns/image-id"
)

// Media is an R4 Media resource. Every element of R4 Media is here (in the
// specification's order) so a strict decoder can reject anything else, such
// as STU3's `context`.
type Media struct {
	ResourceType      string            `json:"resourceType"`
	ID                string            `json:"id,omitempty"`
	Meta              *Meta             `json:"meta,omitempty"`
	ImplicitRules     string            `json:"implicitRules,omitempty"`
	Language          string            `json:"language,omitempty"`
	Text              *Narrative        `json:"text,omitempty"`
	Contained         []json.RawMessage `json:"contained,omitempty"`
	Extension         []json.RawMessage `json:"extension,omitempty"`
	ModifierExtension []json.RawMessage `json:"modifierExtension,omitempty"`
	Identifier        []Identifier      `json:"identifier,omitempty"`
	BasedOn           []Reference       `json:"basedOn,omitempty"`
	PartOf            []Reference       `json:"partOf,omitempty"`
	Status            string            `json:"status"`
	Type              *CodeableConcept  `json:"type,omitempty"`
	Modality          *CodeableConcept  `json:"modality,omitempty"`
	View              *CodeableConcept  `json:"view,omitempty"`
	Subject           *Reference        `json:"subject,omitempty"`
	Encounter         *Reference        `json:"encounter,omitempty"`
	CreatedDateTime   string            `json:"createdDateTime,omitempty"`
	CreatedPeriod     *Period           `json:"createdPeriod,omitempty"`
	Issued            string            `json:"issued,omitempty"`
	Operator          *Reference        `json:"operator,omitempty"`
	ReasonCode        []CodeableConcept `json:"reasonCode,omitempty"`
	BodySite          *CodeableConcept  `json:"bodySite,omitempty"`
	DeviceName        string            `json:"deviceName,omitempty"`
	Device            *Reference        `json:"device,omitempty"`
	Height            int               `json:"height,omitempty"`
	Width             int               `json:"width,omitempty"`
	Frames            int               `json:"frames,omitempty"`
	Duration          *float64          `json:"duration,omitempty"`
	Content           *Attachment       `json:"content,omitempty"`
	Note              []Annotation      `json:"note,omitempty"`
}

// Meta is a resource's version metadata.
type Meta struct {
	VersionID   string `json:"versionId,omitempty"`
	LastUpdated string `json:"lastUpdated,omitempty"`
}

// Narrative is a resource's human-readable summary.
type Narrative struct {
	Status string `json:"status"`
	Div    string `json:"div"`
}

// Identifier is a business identifier.
type Identifier struct {
	Use    string `json:"use,omitempty"`
	System string `json:"system,omitempty"`
	Value  string `json:"value,omitempty"`
}

// Reference points at another resource.
type Reference struct {
	Reference string `json:"reference,omitempty"`
	Display   string `json:"display,omitempty"`
}

// Coding is one code in one system.
type Coding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

// CodeableConcept is a concept as codes and text.
type CodeableConcept struct {
	Coding []Coding `json:"coding,omitempty"`
	Text   string   `json:"text,omitempty"`
}

// Period is a time range.
type Period struct {
	Start string `json:"start,omitempty"`
	End   string `json:"end,omitempty"`
}

// Annotation is a note.
type Annotation struct {
	Text string `json:"text"`
	Time string `json:"time,omitempty"`
}

// Attachment is the photo itself. Size is its length in bytes and Hash the
// base64 SHA-1 of those bytes.
type Attachment struct {
	ContentType string `json:"contentType,omitempty"`
	Language    string `json:"language,omitempty"`
	Data        string `json:"data,omitempty"`
	URL         string `json:"url,omitempty"`
	Size        int64  `json:"size,omitempty"`
	Hash        string `json:"hash,omitempty"`
	Title       string `json:"title,omitempty"`
	Creation    string `json:"creation,omitempty"`
}

// IdentifierValue returns the value of m's identifier in system.
func (m Media) IdentifierValue(system string) string {
	for _, id := range m.Identifier {
		if id.System == system {
			return id.Value
		}
	}
	return ""
}

// Photo is what one clinical photo's Media is built from.
type Photo struct {
	IdentifierSystem string // URI of the image id namespace (default DefaultImageIDNS)
	ImageID          string // the identifier's value: the photo's server-assigned MediaIdentifier, never the client's id
	PatientID        string
	EncounterID      string
	CapturedAt       time.Time
	ContentType      string // of the bytes sent
	Title            string
	Width, Height    int
	BodySite         string // SNOMED CT code
	BodySiteDisplay  string
	Laterality       string // a code of Lateralities
	ViewType         string // a code of Views
	Notes            string
	// Consent is the session's consent note (session.Consent.ConsentNote),
	// written as a Media.note of its own: R4 Media has no consent element,
	// so the record carries it as an annotation.
	Consent string
	// Hash is the base64 SHA-1 of the bytes to be sent, when the caller
	// has it already: the encoder writes it as content.hash rather than
	// hash the photo again. Empty, the encoder computes it.
	Hash string
}

// NewMedia builds the R4 Media for p. content.data and size are left for
// the encoder, which fills them from the bytes it sends, and content.hash
// too unless p gives it.
func NewMedia(p Photo) Media {
	system := p.IdentifierSystem
	if system == "" {
		system = DefaultImageIDNS
	}
	m := Media{
		ResourceType: "Media",
		Identifier:   []Identifier{{Use: "official", System: system, Value: p.ImageID}},
		Status:       "completed",
		Type:         &CodeableConcept{Coding: []Coding{{System: MediaTypeSystem, Code: "image", Display: "Image"}}, Text: "Image"},
		Modality:     &CodeableConcept{Coding: []Coding{{System: DICOMSystem, Code: "XC", Display: "External-camera Photography"}}},
		Subject:      &Reference{Reference: "Patient/" + p.PatientID},
		Width:        p.Width,
		Height:       p.Height,
		Content:      &Attachment{ContentType: p.ContentType, Title: p.Title, Hash: p.Hash},
	}
	if p.EncounterID != "" {
		m.Encounter = &Reference{Reference: "Encounter/" + p.EncounterID}
	}
	if !p.CapturedAt.IsZero() {
		ts := p.CapturedAt.UTC().Format(time.RFC3339)
		m.CreatedDateTime = ts
		m.Content.Creation = ts
	}
	if v, ok := ViewTerm(p.ViewType); ok {
		m.View = &CodeableConcept{Coding: []Coding{v.Coding}, Text: v.Display}
	} else if p.ViewType != "" {
		m.View = &CodeableConcept{Text: p.ViewType}
	}
	if site := bodySite(p); site != nil {
		m.BodySite = site
	}
	if strings.TrimSpace(p.Notes) != "" {
		m.Note = []Annotation{{Text: p.Notes}}
	}
	if p.Consent != "" {
		m.Note = append(m.Note, Annotation{Text: p.Consent})
	}
	return m
}

func bodySite(p Photo) *CodeableConcept {
	lat, hasLat := LateralityCoding(p.Laterality)
	if p.BodySite == "" && !hasLat {
		return nil
	}
	cc := &CodeableConcept{}
	text := p.BodySiteDisplay
	if p.BodySite != "" {
		if isSNOMEDCode(p.BodySite) {
			cc.Coding = append(cc.Coding, Coding{System: SNOMED, Code: p.BodySite, Display: p.BodySiteDisplay})
		} else if text == "" {
			// A free-text site (the seeds sent "left_arm"): keep it as text.
			text = strings.ReplaceAll(p.BodySite, "_", " ")
		}
	}
	if hasLat {
		cc.Coding = append(cc.Coding, lat)
		if text == "" {
			text = lat.Display
		} else {
			text = fmt.Sprintf("%s (%s)", text, strings.ToLower(lat.Display))
		}
	}
	cc.Text = text
	return cc
}

func isSNOMEDCode(s string) bool {
	if len(s) < 6 || len(s) > 18 {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// OperationOutcome is FHIR's error report.
type OperationOutcome struct {
	ResourceType string  `json:"resourceType"`
	Issue        []Issue `json:"issue"`
}

// Issue is one problem in an OperationOutcome.
type Issue struct {
	Severity    string           `json:"severity"`
	Code        string           `json:"code"`
	Details     *CodeableConcept `json:"details,omitempty"`
	Diagnostics string           `json:"diagnostics,omitempty"`
	Expression  []string         `json:"expression,omitempty"`
}

// Outcome builds a one-issue OperationOutcome.
func Outcome(severity, code, text string) OperationOutcome {
	return OperationOutcome{ResourceType: "OperationOutcome", Issue: []Issue{{Severity: severity, Code: code, Diagnostics: text}}}
}

// Bundle is a search result or transaction.
type Bundle struct {
	ResourceType string        `json:"resourceType"`
	ID           string        `json:"id,omitempty"`
	Type         string        `json:"type"`
	Total        *int          `json:"total,omitempty"`
	Link         []BundleLink  `json:"link,omitempty"`
	Entry        []BundleEntry `json:"entry,omitempty"`
}

// BundleLink is a paging link.
type BundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// BundleEntry is one entry of a Bundle.
type BundleEntry struct {
	FullURL  string          `json:"fullUrl,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Request  *BundleRequest  `json:"request,omitempty"`
	Response *BundleResponse `json:"response,omitempty"`
	Search   *BundleSearch   `json:"search,omitempty"`
}

// BundleSearch says why a search result entry is there: "match", or
// "outcome" for the OperationOutcome of an empty or partial search.
type BundleSearch struct {
	Mode string `json:"mode,omitempty"`
}

// BundleRequest is a transaction entry's request.
type BundleRequest struct {
	Method      string `json:"method"`
	URL         string `json:"url"`
	IfNoneExist string `json:"ifNoneExist,omitempty"`
}

// BundleResponse is a transaction-response entry's outcome.
type BundleResponse struct {
	Status   string `json:"status"`
	Location string `json:"location,omitempty"`
	Etag     string `json:"etag,omitempty"`
}
