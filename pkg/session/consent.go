package session

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// Consent is the patient's consent to clinical photography, recorded on the
// session by the GP (NZMA guidance on clinical images, Right 7 of the Code
// of Rights): how it was given, what the photos may be used for, and who
// recorded it and when. It can change until the commit, and every Media
// committed carries it as a note (ConsentNote), ALEX having no consent
// element on Media.
type Consent struct {
	// Method is how consent was given: ConsentVerbal, ConsentWritten or
	// ConsentNotObtainable.
	Method string `json:"method"`
	// Reason is why consent could not be obtained (ConsentNotObtainable
	// only): one of ConsentReasons' codes.
	Reason string `json:"reason,omitempty"`
	// Purposes are what the photos may be used for: always PurposeRecord,
	// and PurposeReferral and PurposeTeaching when the patient agreed.
	Purposes List[string] `json:"purposes"`
	// RecordedBy is who recorded it: the desktop user's id, or the phone's id.
	RecordedBy string `json:"recordedBy"`
	// Via is where it was recorded: "desktop" or "phone".
	Via        string    `json:"via"`
	RecordedAt time.Time `json:"recordedAt"`
}

// Consent methods.
const (
	ConsentVerbal        = "verbal"
	ConsentWritten       = "written"
	ConsentNotObtainable = "not_obtainable"
)

// Consent purposes.
const (
	PurposeRecord   = "record"
	PurposeReferral = "referral"
	PurposeTeaching = "teaching"
)

// Term is one code of a consent vocabulary and what a GP reads.
type Term struct {
	Code    string `json:"code"`
	Display string `json:"display"`
}

// ConsentMethods, ConsentReasons and ConsentPurposes are the consent
// vocabulary both screens offer (GET /api/vocabulary) and the API checks.
var (
	ConsentMethods = []Term{
		{ConsentVerbal, "Verbal consent"},
		{ConsentWritten, "Written consent"},
		{ConsentNotObtainable, "Consent not obtainable"},
	}
	ConsentReasons = []Term{
		{"best_interests", "In the patient's best interests (unable to consent)"},
		{"emergency", "Emergency: no time to obtain consent"},
		{"guardian_unavailable", "Patient lacks capacity and no representative is available"},
	}
	ConsentPurposes = []Term{
		{PurposeRecord, "Clinical record"},
		{PurposeReferral, "Referral"},
		{PurposeTeaching, "Teaching"},
	}
)

// ErrConsentRequired refuses a commit while the session has no consent
// record (CONSENT_REQUIRED).
var ErrConsentRequired = errors.New("record the patient's consent (how it was given and what the photos are for) before committing")

// ErrBadConsent is a consent record that is not one the vocabulary allows.
type ErrBadConsent struct{ Msg string }

func (e *ErrBadConsent) Error() string { return e.Msg }

func known(terms []Term, code string) bool {
	return slices.ContainsFunc(terms, func(t Term) bool { return t.Code == code })
}

func display(terms []Term, code string) string {
	for _, t := range terms {
		if t.Code == code {
			return t.Display
		}
	}
	return code
}

// Normalize checks c against the vocabulary and returns it in its one
// form: the record purpose first and always there, the others in the
// vocabulary's order, no reason unless consent was not obtainable.
func (c Consent) Normalize() (Consent, error) {
	if !known(ConsentMethods, c.Method) {
		return Consent{}, &ErrBadConsent{"method must be verbal, written or not_obtainable"}
	}
	if c.Method == ConsentNotObtainable {
		if !known(ConsentReasons, c.Reason) {
			return Consent{}, &ErrBadConsent{"reason must say why consent could not be obtained (best_interests, emergency or guardian_unavailable)"}
		}
	} else if c.Reason != "" {
		return Consent{}, &ErrBadConsent{"reason is only for consent that could not be obtained"}
	}
	for _, p := range c.Purposes {
		if !known(ConsentPurposes, p) {
			return Consent{}, &ErrBadConsent{"purposes must be record, referral or teaching"}
		}
	}
	out := c
	out.Purposes = List[string]{}
	for _, t := range ConsentPurposes {
		if t.Code == PurposeRecord || slices.Contains(c.Purposes, t.Code) {
			out.Purposes = append(out.Purposes, t.Code)
		}
	}
	return out, nil
}

// ConsentNote is the short standard note every committed Media carries,
// e.g. "Consent to clinical photography: verbal consent. Use: clinical
// record, referral. Recorded on the desktop by user_abc, 2026-12-01 23:50 UTC."
// It holds codes and times only, never free text.
func (c Consent) ConsentNote() string {
	if c.Method == "" {
		return ""
	}
	var b strings.Builder
	b.WriteString("Consent to clinical photography: ")
	b.WriteString(strings.ToLower(display(ConsentMethods, c.Method)))
	if c.Method == ConsentNotObtainable {
		fmt.Fprintf(&b, " (%s)", strings.ToLower(display(ConsentReasons, c.Reason)))
	}
	uses := make([]string, 0, len(c.Purposes))
	for _, p := range c.Purposes {
		uses = append(uses, strings.ToLower(display(ConsentPurposes, p)))
	}
	fmt.Fprintf(&b, ". Use: %s.", strings.Join(uses, ", "))
	if !c.RecordedAt.IsZero() {
		fmt.Fprintf(&b, " Recorded on the %s by %s, %s.", c.Via, c.RecordedBy, c.RecordedAt.UTC().Format("2006-01-02 15:04 MST"))
	}
	return b.String()
}

// ConsentEvent is the data of session.consent.
type ConsentEvent struct {
	SessionID  string  `json:"sessionId"`
	Version    int64   `json:"version"`
	ImageCount int     `json:"imageCount"`
	Consent    Consent `json:"consent"`
}

// SetConsent records the patient's consent on the session (replacing an
// earlier record) and emits session.consent. It is refused while a commit
// runs or once the session is committed; sessionID binds the call to one
// session ("" for the current one). c is normalized first.
func (s *Store) SetConsent(ctx context.Context, userID, sessionID string, c Consent) (Session, error) {
	c, err := c.Normalize()
	if err != nil {
		return Session{}, err
	}
	c.RecordedAt = s.opt.Now().UTC()
	r, err := s.run(ctx, consentScript, events.ConsentRecorded, userID, nil, args{"sessionId": sessionID, "consent": mustJSON(c)})
	if err != nil {
		return Session{}, err
	}
	return r.Session, nil
}
