package committer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

func TestNextStep(t *testing.T) {
	unsure := []session.PhotoState{session.PhotoSending, session.PhotoUnknown, session.PhotoNeedsChecking}
	type row struct {
		k    known
		want step
	}
	rows := []row{
		{known{state: session.PhotoPending}, stepSend},
		{known{state: session.PhotoPending, conditional: true}, stepSend},
		{known{state: session.PhotoInRecord, conditional: true, lookUpKnown: true, canLookUp: true}, stepNone},
		{known{state: session.PhotoRefused, lookUpKnown: true, canLookUp: true}, stepNone},
		{known{state: session.PhotoConflict, conditional: true}, stepNone},
	}
	for _, st := range unsure {
		rows = append(rows,
			row{known{state: st}, stepWaitInfo},
			row{known{state: st, lookUpKnown: true, canLookUp: true}, stepLookUp},
			row{known{state: st, lookUpKnown: true}, stepAskGP},
			row{known{state: st, conditional: true}, stepSendNew},
		)
	}
	for _, r := range rows {
		if got := nextStep(r.k); got != r.want {
			t.Errorf("nextStep(%+v) = %d, want %d", r.k, got, r.want)
		}
	}
}

func TestClassify(t *testing.T) {
	dial := &net.OpError{Op: "dial", Err: errors.New("connection refused")}
	rows := []struct {
		name string
		err  error
		want outcome
	}{
		{"201", nil, written},
		{"photo unreadable before sending", fmt.Errorf("open photo: %w", errors.New("gone")), notWritten},
		{"no token", &fhir.Error{Op: "create token", Err: errors.New("x"), NotSent: true}, notWritten},
		{"connection refused", &fhir.Error{Op: "create", Err: dial, NotSent: true}, notWritten},
		{"reset or timeout", &fhir.Error{Op: "create", Err: context.DeadlineExceeded}, unclear},
		{"empty 200", &fhir.Error{Op: "create", Status: 200, Message: "no Location or id in the answer"}, unclear},
		{"500", &fhir.Error{Status: 500, Code: "exception"}, unclear},
		{"503", &fhir.Error{Status: 503}, unclear},
		{"408", &fhir.Error{Status: 408}, unclear},
		{"409 duplicate", &fhir.Error{Status: 409, Code: "duplicate"}, unclear},
		{"429", &fhir.Error{Status: 429, RetryAfter: time.Second}, notWritten},
		{"401 twice", &fhir.Error{Status: 401}, notWritten},
		{"400 throttled code", &fhir.Error{Status: 400, Code: "throttled"}, notWritten},
		{"412", &fhir.Error{Status: 412, Code: "duplicate"}, severalMatch},
		{"400", &fhir.Error{Status: 400, Code: "business-rule"}, refused},
		{"403", &fhir.Error{Status: 403, Message: "Practice Facility not found"}, refused},
		{"422", &fhir.Error{Status: 422, Code: "processing"}, refused},
		{"413", &fhir.Error{Status: 413, Code: "too-costly"}, refused},
	}
	for _, r := range rows {
		if got := classify(r.err); got != r.want {
			t.Errorf("%s: classify = %d, want %d", r.name, got, r.want)
		}
	}
}

func TestAnswered(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&fhir.Error{Status: 500}, true},
		{&fhir.Error{Status: 503}, true},
		{&fhir.Error{Status: 200}, true},
		{&fhir.Error{Status: 502}, false},
		{&fhir.Error{Status: 504}, false},
		{&fhir.Error{Err: context.DeadlineExceeded}, false},
		{errors.New("other"), false},
	} {
		if got := answered(c.err); got != c.want {
			t.Errorf("answered(%v) = %v", c.err, got)
		}
	}
}

func TestJudge(t *testing.T) {
	const sys = fhir.DefaultImageIDNS
	c := claim{system: sys, value: "ID1", subject: "Patient/p1", hashes: []string{"h1", "h2"}}
	media := func(id, value, subject, hash, status string) fhir.MediaRef {
		return fhir.MediaRef{ID: id, Status: status, Subject: subject, Hash: hash,
			Identifier: []fhir.Identifier{{System: sys, Value: value}}}
	}
	type want struct {
		V     verdict
		ID    string
		Extra []string
	}
	rows := []struct {
		name string
		refs []fhir.MediaRef
		want want
	}{
		{"none", nil, want{absent, "", nil}},
		{"other photos only", []fhir.MediaRef{media("m1", "ID2", "Patient/p1", "h1", "completed")}, want{absent, "", nil}},
		{"ours", []fhir.MediaRef{media("m1", "ID2", "Patient/p1", "h1", "completed"), media("m2", "ID1", "Patient/p1", "h2", "completed")}, want{found, "m2", nil}},
		{"ours withdrawn", []fhir.MediaRef{media("m1", "ID1", "Patient/p1", "h1", "entered-in-error")}, want{absent, "", nil}},
		{"another patient", []fhir.MediaRef{media("m1", "ID1", "Patient/p2", "h1", "completed")}, want{conflicting, "", nil}},
		{"other bytes", []fhir.MediaRef{media("m1", "ID1", "Patient/p1", "h9", "completed")}, want{conflicting, "", nil}},
		{"same identifier, other system", []fhir.MediaRef{{ID: "m1", Subject: "Patient/p1", Hash: "h1", Identifier: []fhir.Identifier{{System: "urn:x", Value: "ID1"}}}}, want{absent, "", nil}},
		{"two of ours", []fhir.MediaRef{media("m1", "ID1", "Patient/p1", "h1", "completed"), media("m2", "ID1", "Patient/p1", "h2", "completed")}, want{found, "m1", []string{"m2"}}},
		{"ours and a stranger", []fhir.MediaRef{media("m1", "ID1", "Patient/p2", "h1", "completed"), media("m2", "ID1", "Patient/p1", "h1", "completed")}, want{found, "m2", nil}},
	}
	for _, r := range rows {
		v, id, extra, _ := judge(r.refs, c)
		if diff := cmp.Diff(r.want, want{v, id, extra}); diff != "" {
			t.Errorf("%s (-want +got):\n%s", r.name, diff)
		}
	}
}

func TestRetryDelay(t *testing.T) {
	const s = time.Second
	rows := []struct {
		n          int
		retryAfter time.Duration
		u          float64
		want       time.Duration
	}{
		{1, 0, 0.5, s},
		{2, 0, 0.5, 2 * s},
		{4, 0, 0.5, 8 * s},
		{6, 0, 0.5, 30 * s},
		{60, 0, 0.5, 30 * s},
		{1, 0, 0, 800 * time.Millisecond},
		{6, 0, 0.999999, 36*s - 36*time.Microsecond},
		{1, 7 * s, 0.5, 7 * s},
		{6, 7 * s, 0.5, 30 * s},
	}
	for _, r := range rows {
		if got := retryDelay(r.n, s, 30*s, r.retryAfter, r.u); got.Round(time.Millisecond) != r.want.Round(time.Millisecond) {
			t.Errorf("retryDelay(%d, retry-after %s, %v) = %s, want %s", r.n, r.retryAfter, r.u, got, r.want)
		}
	}
}

func TestWorstWait(t *testing.T) {
	errs := []error{
		&fhir.Error{Status: 503},
		&fhir.Error{Status: 429, RetryAfter: 3 * time.Second},
		&fhir.Error{Status: 200},
		errors.New("s3 down"),
	}
	ra, worst := worstWait(errs)
	reason, msg := describe(worst)
	if reason != session.WaitALEXThrottled || ra != 3*time.Second || msg == "" {
		t.Errorf("worst %v (%s %q), retry-after %s", worst, reason, msg, ra)
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{&fhir.Error{Status: 503}, session.WaitALEXUnavailable},
		{&fhir.Error{Err: errors.New("reset")}, session.WaitALEXUnavailable},
		{&fhir.Error{Status: 204}, session.WaitALEXUnclear},
		{errors.New("s3 down"), session.WaitInternal},
	} {
		if got, _ := describe(c.err); got != c.want {
			t.Errorf("describe(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}
