package api

import (
	"net/http"
	"testing"
)

// Two desktops of one GP: the first shows patient A's session while the
// second has replaced it with patient B's. Nothing the first sends for A's
// session (it names the session it shows) may land on B's: not consent, a
// commit, stopping a commit, removing B's phone, nor a photo the first
// added while it showed A and records late. Each gets 410 session_changed
// and B's session is unchanged. Without a session named, the call acts on
// the current session as before.
func TestStaleDesktopNeverActsOnAnotherPatientsSession(t *testing.T) {
	h := newHarness(t)
	desk := h.desktop("u1")
	first := h.do("POST", "/api/session-tokens", desk, map[string]any{"patientId": "pA", "encounterId": "enc_1"})
	if first.status != 200 {
		t.Fatalf("start A: %d %s", first.status, first.raw)
	}
	sessA := first.body["sessionId"].(string)
	phone := h.start("u1", "pB") // the second desktop: patient B, a phone paired
	h.record("u1", phone)
	late, lateID := h.upload("u1", desk, jpegBytes) // taken on the first desktop while it showed A
	phones := h.do("GET", "/api/users/u1/phones", desk, nil)
	list, _ := phones.body["phones"].([]any)
	if phones.status != 200 || len(list) != 1 {
		t.Fatalf("phones: %d %s", phones.status, phones.raw)
	}
	phoneID := list[0].(map[string]any)["id"].(string)
	before := h.snapshot("u1")
	for _, c := range []struct {
		method, path string
		body         map[string]any
	}{
		{"PUT", "/api/users/u1/consent", map[string]any{"method": "written", "purposes": []string{"record", "teaching"}, "sessionId": sessA}},
		{"POST", "/api/users/u1/commit", map[string]any{"sessionId": sessA}},
		{"POST", "/api/users/u1/commit/stop", map[string]any{"sessionId": sessA}},
		{"DELETE", "/api/users/u1/phones/" + phoneID + "?sessionId=" + sessA, nil},
		{"POST", "/api/users/u1/images", map[string]any{"imageId": lateID, "s3Key": late, "source": "desktop", "patientId": "pB", "sessionId": sessA}},
	} {
		r := h.do(c.method, c.path, desk, c.body, "Prefer", "respond-async")
		if r.status != http.StatusGone || r.body["code"] != "session_changed" {
			t.Errorf("stale desktop %s %s: %d %s", c.method, c.path, r.status, r.raw)
		}
		if after := h.snapshot("u1"); after != before {
			t.Fatalf("stale desktop %s %s changed patient B's session:\n%s\n%s", c.method, c.path, before, after)
		}
	}
	cur := h.do("GET", "/api/users/u1/session", desk, nil)
	sessB := cur.body["sessionId"].(string)
	if r := h.do("PUT", "/api/users/u1/consent", desk, map[string]any{"method": "verbal", "sessionId": sessB}); r.status != 200 {
		t.Fatalf("consent naming the current session: %d %s", r.status, r.raw)
	}
	if r := h.do("POST", "/api/users/u1/images", desk, map[string]any{"imageId": lateID, "s3Key": late, "source": "desktop", "patientId": "pB", "sessionId": sessB}); r.status != 200 {
		t.Fatalf("a photo naming the current session: %d %s", r.status, r.raw)
	}
	if r := h.do("POST", "/api/users/u1/commit", desk, map[string]any{"sessionId": sessB}, "Prefer", "respond-async"); r.status != http.StatusAccepted {
		t.Fatalf("commit naming the current session: %d %s", r.status, r.raw)
	}
}
