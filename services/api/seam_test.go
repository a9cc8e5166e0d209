package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/clinicalimages/clinimg/dev/devissuer"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// fakeSessions is the session store as a test wants it: each method it
// sets answers; a call it did not expect panics (the embedded interface is
// nil), which the API's recoverer turns into a 500 the test sees.
type fakeSessions struct {
	sessions
	credential     func(credential string) (session.PhoneCredential, error)
	get, peek      func(userID string) (session.Session, error)
	start          func(p session.StartParams) (session.Started, error)
	beginCommit    func(userID, sessionID, commitID string) (session.Session, error)
	setOpenPatient func(userID, patientID string) (session.Session, bool, error)
}

func (f fakeSessions) Options() session.Options { return session.Options{TokenTTL: time.Hour} }
func (f fakeSessions) Credential(_ context.Context, cred string) (session.PhoneCredential, error) {
	return f.credential(cred)
}
func (f fakeSessions) Get(_ context.Context, userID string) (session.Session, error) {
	return f.get(userID)
}
func (f fakeSessions) Peek(_ context.Context, userID string) (session.Session, error) {
	return f.peek(userID)
}
func (f fakeSessions) SessionIDOf(context.Context, string) (string, error) {
	return "", session.ErrNotFound
}
func (f fakeSessions) Start(_ context.Context, p session.StartParams) (session.Started, error) {
	return f.start(p)
}
func (f fakeSessions) BeginCommit(_ context.Context, userID, sessionID, commitID string, _ ...string) (session.Session, error) {
	return f.beginCommit(userID, sessionID, commitID)
}
func (f fakeSessions) SetOpenPatient(_ context.Context, userID, patientID string) (session.Session, bool, error) {
	return f.setOpenPatient(userID, patientID)
}

// fakeWaiter tells every commit the outcome it holds at once.
type fakeWaiter struct{ outcome session.CommitEvent }

func (w fakeWaiter) Wait(commitID string) (<-chan session.CommitEvent, func()) {
	ch := make(chan session.CommitEvent, 1)
	ev := w.outcome
	ev.CommitID = commitID
	ch <- ev
	return ch, func() {}
}

// The handlers through the seam: no Redis, S3 or NATS, only fakes of what
// the handlers use. Each answer is the documented one for its status, the
// body matching the route's schema in openapi.json.
func TestHandlersOnFakes(t *testing.T) {
	issuer, err := devissuer.New("https://idp.test", "clinimg")
	if err != nil {
		t.Fatal(err)
	}
	desk, err := issuer.Token("u1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const phone = phonePrefix + "fake"
	paired := session.Session{UserID: "u1", SessionID: "s1", PatientID: "p1", EncounterID: "e1", CommitStatus: session.CommitNone, Version: 3,
		Phones: session.List[session.Phone]{{ID: "ph1"}}}
	down := fmt.Errorf("redis: dial: %w", syscall.ECONNREFUSED)
	phoneOf := func(sessionID string) func(string) (session.PhoneCredential, error) {
		return func(string) (session.PhoneCredential, error) {
			return session.PhoneCredential{UserID: "u1", SessionID: sessionID, PhoneID: "ph1"}, nil
		}
	}
	doc := loadOpenAPI(t)

	for _, tc := range []struct {
		name                string
		store               fakeSessions
		waiter              fakeWaiter
		method, path, route string
		token, body         string
		headers             []string
		status              int
		want                map[string]any // top-level fields of the answer
		retryAfter          string
	}{
		{
			name:   "store unavailable: 503, retry",
			store:  fakeSessions{get: func(string) (session.Session, error) { return session.Session{}, down }},
			method: "GET", path: "/api/users/u1/session", route: "/api/users/{userId}/session", token: desk,
			status: 503, want: map[string]any{"code": "unavailable"}, retryAfter: "1",
		},
		{
			name:   "phone credential unreadable: 503",
			store:  fakeSessions{credential: func(string) (session.PhoneCredential, error) { return session.PhoneCredential{}, down }},
			method: "GET", path: "/api/users/u1/session", route: "/api/users/{userId}/session", token: phone,
			status: 503, want: map[string]any{"code": "unavailable"}, retryAfter: "1",
		},
		{
			name: "phone of a replaced session: 410",
			store: fakeSessions{credential: phoneOf("s0"),
				peek: func(string) (session.Session, error) { return paired, nil }},
			method: "GET", path: "/api/users/u1/session", route: "/api/users/{userId}/session", token: phone,
			status: 410, want: map[string]any{"code": "session_changed"},
		},
		{
			name: "phone of an ended session: 410",
			store: fakeSessions{credential: phoneOf("s1"),
				peek: func(string) (session.Session, error) { return session.Session{}, session.ErrNotFound }},
			method: "GET", path: "/api/users/u1/session", route: "/api/users/{userId}/session", token: phone,
			status: 410, want: map[string]any{"code": "session_changed"},
		},
		{
			name: "paired phone reads its session",
			store: fakeSessions{credential: phoneOf("s1"),
				peek: func(string) (session.Session, error) { return paired, nil },
				get:  func(string) (session.Session, error) { return paired, nil }},
			method: "GET", path: "/api/users/u1/session", route: "/api/users/{userId}/session", token: phone,
			status: 200, want: map[string]any{"sessionId": "s1", "version": 3.0},
		},
		{
			name: "another patient's photos: 409 with their count",
			store: fakeSessions{start: func(session.StartParams) (session.Started, error) {
				return session.Started{}, &session.UncommittedError{N: 2}
			}},
			method: "POST", path: "/api/session-tokens", route: "/api/session-tokens", token: desk,
			body:   `{"patientId":"p2","encounterId":"e2"}`,
			status: 409, want: map[string]any{"code": "uncommitted_images", "count": 2.0},
		},
		{
			name: "no session to hold: 404",
			store: fakeSessions{setOpenPatient: func(string, string) (session.Session, bool, error) {
				return session.Session{}, false, session.ErrNotFound
			}},
			method: "PUT", path: "/api/users/u1/open-patient", route: "/api/users/{userId}/open-patient", token: desk,
			body:   `{"patientId":"p1"}`,
			status: 404, want: map[string]any{"code": "session_not_found"},
		},
		{
			name: "open patient held",
			store: fakeSessions{setOpenPatient: func(string, string) (session.Session, bool, error) {
				return session.Session{PatientID: "p1", Held: true, Version: 4}, true, nil
			}},
			method: "PUT", path: "/api/users/u1/open-patient", route: "/api/users/{userId}/open-patient", token: desk,
			body:   `{"patientId":"p9"}`,
			status: 200, want: map[string]any{"patientId": "p1", "held": true, "version": 4.0},
		},
		{
			name: "commit in the record",
			store: fakeSessions{beginCommit: func(string, string, string) (session.Session, error) {
				return paired, nil
			}},
			waiter: fakeWaiter{session.CommitEvent{Success: true, MediaResourceIDs: session.List[string]{"m1"}, Message: "done"}},
			method: "POST", path: "/api/users/u1/commit", route: "/api/users/{userId}/commit", token: desk,
			status: 200, want: map[string]any{"success": true, "imageCount": 1.0, "message": "done"},
		},
		{
			name: "commit failed part way: 502, partial",
			store: fakeSessions{beginCommit: func(string, string, string) (session.Session, error) {
				return paired, nil
			}},
			waiter: fakeWaiter{session.CommitEvent{Done: 1, Total: 2, Message: "ALEX is unavailable (503)"}},
			method: "POST", path: "/api/users/u1/commit", route: "/api/users/{userId}/commit", token: desk,
			status: 502, want: map[string]any{"code": "commit_failed", "partialSuccess": true, "inRecord": 1.0, "errors": nil},
		},
		{
			name: "commit without consent: 409",
			store: fakeSessions{beginCommit: func(string, string, string) (session.Session, error) {
				return session.Session{}, session.ErrConsentRequired
			}},
			method: "POST", path: "/api/users/u1/commit", route: "/api/users/{userId}/commit", token: desk,
			headers: []string{"Prefer", "respond-async"},
			status:  409, want: map[string]any{"code": "consent_required"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(Config{CommitWait: time.Minute, MaxImages: 10},
				Deps{Store: tc.store, Waiter: tc.waiter, Verifier: issuer.Verifier()})
			srv := httptest.NewServer(s.Router())
			defer srv.Close()
			var body io.Reader
			if tc.body != "" {
				body = bytes.NewReader([]byte(tc.body))
			}
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, body)
			req.Header.Set("Authorization", "Bearer "+tc.token)
			if tc.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			for i := 0; i+1 < len(tc.headers); i += 2 {
				req.Header.Set(tc.headers[i], tc.headers[i+1])
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			raw, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", res.StatusCode, tc.status, raw)
			}
			if got := res.Header.Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
			}
			var got map[string]any
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("answer is not a JSON object: %s", raw)
			}
			for k, want := range tc.want {
				if v, ok := got[k]; !ok || fmt.Sprint(v) != fmt.Sprint(want) {
					t.Errorf("%s = %v (present %v), want %v; answer %s", k, v, ok, want, raw)
				}
			}
			resp := doc.Paths.Find(tc.route).GetOperation(tc.method).Responses.Status(tc.status)
			if resp == nil {
				t.Fatalf("%s %s %d is not documented", tc.method, tc.route, tc.status)
			}
			var anyBody any
			_ = json.Unmarshal(raw, &anyBody)
			if err := resp.Value.Content.Get("application/json").Schema.Value.VisitJSON(anyBody, openapi3.EnableJSONSchema2020()); err != nil {
				t.Errorf("answer does not match the documented schema: %v\n%s", err, raw)
			}
		})
	}
}
