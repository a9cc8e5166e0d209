package api

import (
	"net/http"
	"testing"
)

// While the desktop says another patient is open, a phone keeps its photos
// waiting and can neither code, delete, consent nor commit: every change
// it tries is refused (409 patient_mismatch, not naming the open patient)
// and changes nothing. It still reads the session and reports what it
// holds; the desktop may still commit the session's photos to their own
// patient.
func TestHeldSessionRefusesPhoneChanges(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	desk := h.desktop("u1")
	id := h.record("u1", phone)
	h.consent("u1", phone)
	if r := h.do("PUT", "/api/users/u1/open-patient", desk, map[string]any{"patientId": "p2"}); r.status != 200 || r.body["held"] != true {
		t.Fatalf("open p2: %d %s", r.status, r.raw)
	}
	before := h.snapshot("u1")
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"PATCH", "/api/users/u1/images/" + id, map[string]any{"laterality": "left"}},
		{"DELETE", "/api/users/u1/images/" + id, nil},
		{"PUT", "/api/users/u1/consent", map[string]any{"method": "written", "purposes": []string{"record"}}},
		{"POST", "/api/users/u1/commit", nil},
	} {
		r := h.do(c.method, c.path, phone, c.body, "Prefer", "respond-async")
		if r.status != http.StatusConflict || r.body["code"] != "patient_mismatch" {
			t.Errorf("phone %s %s while held: %d %s", c.method, c.path, r.status, r.raw)
		}
		if after := h.snapshot("u1"); after != before {
			t.Fatalf("phone %s %s while held changed the session:\n%s\n%s", c.method, c.path, before, after)
		}
	}
	if r := h.do("GET", "/api/users/u1/session", phone, nil); r.status != 200 {
		t.Fatalf("phone reads a held session: %d %s", r.status, r.raw)
	}
	if r := h.do("PUT", "/api/users/u1/pending", phone, map[string]any{"count": 2}); r.status != 200 {
		t.Fatalf("phone reports what it holds: %d %s", r.status, r.raw)
	}
	if r := h.do("POST", "/api/users/u1/presigned-url", phone, map[string]any{"fileName": "a.jpg", "contentType": "image/jpeg", "contentLength": len(jpegBytes)}); r.status != 200 {
		t.Fatalf("phone uploads a photo to keep waiting: %d %s", r.status, r.raw)
	}
	if r := h.do("POST", "/api/users/u1/commit", desk, nil, "Prefer", "respond-async"); r.status != http.StatusAccepted {
		t.Fatalf("desktop commits the held session to its own patient: %d %s", r.status, r.raw)
	}
}
