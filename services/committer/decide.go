package committer

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/retry"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// The decisions of a commit, photo by photo, as pure functions of what is
// known: DESIGN.md "How the commit decides, photo by photo".

// step is what to do next for one photo.
type step int

const (
	stepNone     step = iota // in the record, or waiting for the GP (refused, conflict)
	stepSend                 // not in the record: write it
	stepSendNew              // outcome unknown, conditional create: write it unless ALEX has it
	stepLookUp               // outcome unknown: look it up before anything is written again
	stepAskGP                // outcome unknown and no way to look it up: needs checking
	stepWaitInfo             // outcome unknown: first learn whether it can be looked up
)

// known is what the committer knows of one photo when it decides.
type known struct {
	state session.PhotoState
	// conditional: the server offers conditional create (If-None-Exist).
	conditional bool
	// lookUpKnown: whether a lookup is possible has been found out;
	// canLookUp: it is (identifier search, or the patient's NHI for ALEX's
	// patient.identifier search).
	lookUpKnown, canLookUp bool
}

// nextStep decides what to do with one photo. A photo whose write may
// have landed (sending after a crash, unknown, needs checking) is never
// written again before ALEX has said it does not hold it.
func nextStep(k known) step {
	switch k.state {
	case session.PhotoInRecord, session.PhotoRefused, session.PhotoConflict:
		return stepNone
	case session.PhotoPending:
		return stepSend
	}
	switch {
	case k.conditional:
		return stepSendNew
	case !k.lookUpKnown:
		return stepWaitInfo
	case k.canLookUp:
		return stepLookUp
	}
	return stepAskGP
}

// outcome is what a write's answer says about the record.
type outcome int

const (
	written      outcome = iota // stored: the answer names the Media
	notWritten                  // nothing was stored; safe to send again (never sent, 401, 429)
	refused                     // ALEX refused it and stored nothing (400, 403, 404, 413, 422, ...)
	unclear                     // it may be stored: timeout, reset, 5xx, 408, a 2xx without an id, "duplicate"
	severalMatch                // 412: several Media already carry the identifier
)

// classify reads a create's error. Only an answer that shows nothing was
// stored lets the photo be sent again without a lookup.
func classify(err error) outcome {
	if err == nil {
		return written
	}
	var e *fhir.Error
	if !errors.As(err, &e) {
		// Opening or encoding the photo failed: the request never left.
		return notWritten
	}
	switch {
	case e.NotSent:
		return notWritten
	case e.Status == 0, e.Status >= 200 && e.Status < 300:
		return unclear
	case e.Status == http.StatusPreconditionFailed:
		return severalMatch
	case e.Status == http.StatusRequestTimeout, e.Status >= 500, e.Code == "duplicate":
		// A server that refuses a duplicate identifier has the photo.
		return unclear
	case e.Status == http.StatusUnauthorized, e.Status == http.StatusTooManyRequests, e.Transient():
		return notWritten
	}
	return refused
}

// answered reports whether an unclear outcome came as the server's own
// answer (a 5xx other than a gateway's, a 2xx without an id): the server
// is done with the request, so a lookup now tells the truth. Without an
// answer (timeout, reset, 502, 504) the write may still be under way, and
// the lookup waits for the next attempt.
func answered(err error) bool {
	var e *fhir.Error
	if !errors.As(err, &e) || e.Status == 0 {
		return false
	}
	return e.Status != http.StatusBadGateway && e.Status != http.StatusGatewayTimeout
}

// claim is what makes a Media a given photo's.
type claim struct {
	system, value string   // the photo's identifier
	subject       string   // Patient/{id} of its session
	hashes        []string // SHA-1s of every body sent under the identifier
}

// verdict is what a lookup found.
type verdict int

const (
	absent      verdict = iota // no live Media carries the identifier
	found                      // the photo's own Media
	conflicting                // a Media carries the identifier but is not the photo's
)

// judge decides what Media with c's identifier say about the photo. It is
// found only in a Media of its own patient whose content.hash is the
// SHA-1 of bytes it sent; any other Media under its identifier is never
// claimed. extra lists further Media of its own (duplicates to withdraw).
func judge(refs []fhir.MediaRef, c claim) (v verdict, id string, extra []string, why string) {
	var ours []string
	var foreign *fhir.MediaRef
	for _, r := range refs {
		if r.Status == "entered-in-error" || !carries(r, c.system, c.value) {
			continue
		}
		if r.Subject == c.subject && slices.Contains(c.hashes, r.Hash) {
			ours = append(ours, r.ID)
		} else if foreign == nil {
			foreign = &r
		}
	}
	switch {
	case len(ours) > 1:
		return found, ours[0], ours[1:], ""
	case len(ours) == 1:
		return found, ours[0], nil, ""
	case foreign == nil:
		return absent, "", nil, ""
	case foreign.Subject != c.subject:
		return conflicting, "", nil, "ALEX holds a Media under this photo's identifier for another patient; it is not this photo and was not claimed"
	}
	return conflicting, "", nil, "ALEX holds a Media under this photo's identifier with other bytes; it is not this photo and was not claimed"
}

func carries(r fhir.MediaRef, system, value string) bool {
	for _, id := range r.Identifier {
		if id.System == system && id.Value == value {
			return true
		}
	}
	return false
}

// retryDelay is how long to wait after attempt n (1, 2, ...) failed:
// initial doubling up to ceiling, with jitter from u in [0, 1) of -20% to
// +20%, and never less than ALEX's Retry-After.
func retryDelay(n int, initial, ceiling, retryAfter time.Duration, u float64) time.Duration {
	d := retry.Delay(uint64(max(n, 1)), initial, ceiling)
	d = time.Duration(float64(d) * (0.8 + 0.4*u))
	return max(d, retryAfter)
}

// settlingError is a photo waiting until a write of it whose answer was
// lost can no longer be under way at ALEX (left from now).
type settlingError struct{ left time.Duration }

func (e *settlingError) Error() string {
	return "a write of this photo may still be under way at ALEX"
}

// describe says why a fault makes the commit wait: a session.Wait* reason
// and what the GP reads.
func describe(err error) (reason, message string) {
	var e *fhir.Error
	var s *settlingError
	switch {
	case errors.As(err, &s):
		return session.WaitALEXUnclear, "ALEX did not answer a write; the photo is looked up once that write can no longer land"
	case !errors.As(err, &e):
		return session.WaitInternal, "The photos could not be read from storage"
	}
	switch {
	case e.Status == http.StatusTooManyRequests:
		return session.WaitALEXThrottled, "ALEX asked us to slow down (429)"
	case e.Status >= 200 && e.Status < 300:
		return session.WaitALEXUnclear, "ALEX answered without saying whether the photo was stored; it is looked up before it is sent again"
	case e.Status == http.StatusUnauthorized:
		return session.WaitALEXUnavailable, "ALEX refused our credentials (401)"
	case e.Status > 0:
		return session.WaitALEXUnavailable, fmt.Sprintf("ALEX is unavailable (%d %s)", e.Status, http.StatusText(e.Status))
	case e.NotSent:
		return session.WaitALEXUnavailable, "ALEX cannot be reached"
	}
	return session.WaitALEXUnavailable, "ALEX did not answer"
}

// worstWait picks the fault the screens show when several photos failed
// (a throttle first, as it sets the pace, then an unclear answer, then the
// rest) and the longest Retry-After among them.
func worstWait(errs []error) (retryAfter time.Duration, worst error) {
	rank := func(err error) int {
		switch r, _ := describe(err); r {
		case session.WaitALEXThrottled:
			return 3
		case session.WaitALEXUnclear:
			return 2
		case session.WaitALEXUnavailable:
			return 1
		}
		return 0
	}
	for _, err := range errs {
		if worst == nil || rank(err) > rank(worst) {
			worst = err
		}
		var e *fhir.Error
		var s *settlingError
		switch {
		case errors.As(err, &e):
			retryAfter = max(retryAfter, e.RetryAfter)
		case errors.As(err, &s):
			retryAfter = max(retryAfter, s.left)
		}
	}
	return retryAfter, worst
}

// refusal is what the GP reads about a photo ALEX refused.
func refusal(err error) string {
	var e *fhir.Error
	if errors.As(err, &e) && e.Status > 0 {
		return fmt.Sprintf("ALEX refused this photo (%d): %s", e.Status, e.Message)
	}
	return err.Error()
}
