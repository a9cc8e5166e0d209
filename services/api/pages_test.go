package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// The QR code opens the phone page at the address the desktop used (a LAN
// address with `HOST=... make run`, https behind a proxy), and at PUBLIC_URL
// when that is set.
func TestQRURLFollowsTheDesktopsOrigin(t *testing.T) {
	tests := []struct {
		name, publicURL, host, proto, want string
	}{
		{"origin", "", "192.168.1.20:8080", "", "http://192.168.1.20:8080/mobile?token="},
		{"origin behind TLS proxy", "", "clinic.example", "https", "https://clinic.example/mobile?token="},
		{"PUBLIC_URL wins", "https://images.clinic.example", "192.168.1.20:8080", "", "https://images.clinic.example/mobile?token="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.PublicURL = tt.publicURL })
			req, _ := http.NewRequest("POST", h.srv.URL+"/api/session-tokens", strings.NewReader(`{"patientId":"p1","encounterId":"e1"}`))
			req.Host = tt.host
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+h.desktop("u1"))
			if tt.proto != "" {
				req.Header.Set("X-Forwarded-Proto", tt.proto)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var body struct{ QRCodeURL string }
			decodeBody(t, res, &body)
			if !strings.HasPrefix(body.QRCodeURL, tt.want) {
				t.Errorf("qrCodeUrl = %q, want %s<token>", body.QRCodeURL, tt.want)
			}
		})
	}
	if c, err := ConfigFromEnv(func(k string) string {
		return map[string]string{"AUTH_JWKS_URL": "https://idp.test/jwks", "AUTH_ISSUER": "https://idp.test", "AUTH_AUDIENCE": "clinimg", "REALTIME_SIGNING_KEY": "test:" + strings.Repeat("k", 32)}[k]
	}); err != nil || c.PublicURL != "" {
		t.Errorf("PUBLIC_URL default = %q (%v), want empty: the request's origin", c.PublicURL, err)
	}
}

// Every view, side and limit GET /api/vocabulary offers is accepted by the
// API and coded in the Media built from the stored photo; nothing else is
// accepted; the cap and its message are the configured ones.
func TestVocabularyIsAcceptedAndCoded(t *testing.T) {
	const maxImages = 3
	h := newHarness(t, func(c *Config) { c.MaxImages = maxImages })
	var v vocabulary
	if r := h.do("GET", "/api/vocabulary", "", nil); r.status != 200 || decodeRaw(t, r.raw, &v) != nil {
		t.Fatalf("vocabulary: %d %s", r.status, r.raw)
	}
	if len(v.Views) == 0 || len(v.Lateralities) != 3 {
		t.Fatalf("vocabulary lists %d views, %d sides", len(v.Views), len(v.Lateralities))
	}
	phone := h.start("u1", "p1")
	id := h.record("u1", phone)
	stored := func() session.Metadata {
		s, err := h.store.Peek(context.Background(), "u1")
		if err != nil {
			t.Fatal(err)
		}
		return s.Images[0].Metadata
	}
	media := func(m session.Metadata) fhir.Media {
		return fhir.NewMedia(fhir.Photo{ImageID: id, PatientID: "p1", BodySite: m.BodySite, BodySiteDisplay: m.BodySiteDisplay,
			Laterality: m.Laterality, ViewType: m.ViewType})
	}
	for _, view := range v.Views {
		if r := h.do("PATCH", "/api/users/u1/images/"+id, phone, map[string]any{"viewType": view.Code}); r.status != 200 {
			t.Errorf("view %q offered but refused: %d %s", view.Code, r.status, r.raw)
			continue
		}
		m := media(stored())
		if view.Coding.System == "" || view.Coding.Code == "" || m.View == nil || !cmp.Equal(m.View.Coding, []fhir.Coding{view.Coding}) || m.View.Text != view.Display {
			t.Errorf("view %q coded as %+v, want %+v", view.Code, m.View, view.Coding)
		}
	}
	for _, side := range v.Lateralities {
		if r := h.do("PATCH", "/api/users/u1/images/"+id, phone, map[string]any{"laterality": side.Code, "bodySite": "14975008"}); r.status != 200 {
			t.Errorf("side %q offered but refused: %d %s", side.Code, r.status, r.raw)
			continue
		}
		m := media(stored())
		if m.BodySite == nil || !containsCoding(m.BodySite.Coding, side.Coding) || side.Coding.System != fhir.SNOMED {
			t.Errorf("side %q coded as %+v, want %+v beside the site", side.Code, m.BodySite, side.Coding)
		}
	}
	for _, bad := range []map[string]any{{"viewType": "other"}, {"viewType": "Anterior"}, {"laterality": "both"}} {
		if r := h.do("PATCH", "/api/users/u1/images/"+id, phone, bad); r.status != 400 {
			t.Errorf("%v not offered but accepted: %d", bad, r.status)
		}
	}

	notes := strings.Repeat("é", v.Limits.MaxNotes)
	if r := h.do("PATCH", "/api/users/u1/images/"+id, phone, map[string]any{"notes": notes}); r.status != 200 {
		t.Errorf("notes of maxNotes (%d) characters refused: %d", v.Limits.MaxNotes, r.status)
	}
	if r := h.do("PATCH", "/api/users/u1/images/"+id, phone, map[string]any{"notes": notes + "x"}); r.status != 400 {
		t.Errorf("notes over maxNotes accepted: %d", r.status)
	}

	if v.Limits.MaxImages != maxImages || v.Limits.WarnImages > maxImages || v.Limits.MaxMessage != session.CapMessage(maxImages) {
		t.Fatalf("limits %+v, want the configured cap %d", v.Limits, maxImages)
	}
	for range maxImages - 1 {
		h.record("u1", phone)
	}
	key, next := h.upload("u1", phone, jpegBytes)
	r := h.do("POST", "/api/users/u1/images", phone, map[string]any{"imageId": next, "s3Key": key, "source": "mobile"})
	if r.status != 400 || r.body["code"] != "image_limit" || r.body["error"] != v.Limits.MaxMessage {
		t.Errorf("photo %d: %d %s, want 400 image_limit with %q", maxImages+1, r.status, r.raw, v.Limits.MaxMessage)
	}
}

func containsCoding(cs []fhir.Coding, c fhir.Coding) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

// The desktop's upload names the patient it has open: a session of another
// patient takes nothing from it.
func TestRecordRefusesAnotherPatientsSession(t *testing.T) {
	h := newHarness(t)
	h.start("u1", "p1")
	desk := h.desktop("u1")
	key, id := h.upload("u1", desk, jpegBytes)
	before := h.snapshot("u1")
	r := h.do("POST", "/api/users/u1/images", desk, map[string]any{"imageId": id, "s3Key": key, "source": "desktop", "patientId": "p2"})
	if r.status != 409 || r.body["code"] != "patient_mismatch" {
		t.Fatalf("record for p2 into p1's session: %d %s", r.status, r.raw)
	}
	if after := h.snapshot("u1"); after != before {
		t.Fatalf("a refused record changed the session:\n%s\n%s", before, after)
	}
	if r := h.do("POST", "/api/users/u1/images", desk, map[string]any{"imageId": id, "s3Key": key, "source": "desktop", "patientId": "p1"}); r.status != 200 {
		t.Fatalf("record for the open patient: %d %s", r.status, r.raw)
	}
}

// A phone reports what it still holds; the session carries it per phone, the
// desktop cannot set it, and bad counts change nothing.
func TestPendingCount(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	desk := h.desktop("u1")
	if r := h.do("PUT", "/api/users/u1/pending", phone, map[string]any{"count": 2}); r.status != 200 || r.body["pendingPhotos"] != float64(2) {
		t.Fatalf("pending 2: %d %s", r.status, r.raw)
	}
	s, _ := h.store.Peek(context.Background(), "u1")
	if s.PendingPhotos() != 2 || len(s.Pending) != 1 {
		t.Fatalf("session pending %+v", s.Pending)
	}
	before := h.snapshot("u1")
	for _, c := range []struct {
		token string
		body  any
		want  int
	}{
		{desk, map[string]any{"count": 1}, 403},
		{phone, map[string]any{"count": -1}, 400},
		{phone, map[string]any{"count": "2"}, 400},
		{phone, map[string]any{}, 400},
	} {
		if r := h.do("PUT", "/api/users/u1/pending", c.token, c.body); r.status != c.want {
			t.Errorf("%v: %d %s, want %d", c.body, r.status, r.raw, c.want)
		}
	}
	if after := h.snapshot("u1"); after != before {
		t.Fatalf("refused reports changed the session")
	}
	if r := h.do("PUT", "/api/users/u1/pending", phone, map[string]any{"count": 0}); r.status != 200 || r.body["pendingPhotos"] != float64(0) {
		t.Fatalf("pending 0: %d %s", r.status, r.raw)
	}
}

// Body sites are found by any word or synonym, by prefix and inside a word,
// best match first.
func TestBodySiteSearch(t *testing.T) {
	tests := []struct {
		q     string
		first string // code of the best match; "" for no match
	}{
		{"forearm", "14975008"},
		{"Forearm", "14975008"},
		{"fore", "14975008"},
		{"lower arm", "14975008"},
		{"upper arm", "40983000"},
		{"left upper", "368208006"},
		{"big toe", "78883009"},
		{"groin", "26893007"},
		{"ank", "70258002"},
		{"14975008", "14975008"},
		{"rist", "74670003"},
		{"zzz", ""},
	}
	for _, tt := range tests {
		got := searchBodySites(tt.q)
		first := ""
		if len(got) > 0 {
			first = got[0].Code
		}
		if first != tt.first {
			t.Errorf("search %q: first %q (%d hits), want %q", tt.q, first, len(got), tt.first)
		}
	}
	if n := len(searchBodySites("")); n != len(bodySites) {
		t.Errorf("empty search lists %d sites, want all %d", n, len(bodySites))
	}
	h := newHarness(t)
	r := h.do("GET", "/api/body-sites?q=forearm", "", nil)
	if r.status != 200 || !strings.HasPrefix(string(r.raw), `[{"code":"14975008"`) {
		t.Errorf("GET body-sites?q=forearm: %d %.80s", r.status, r.raw)
	}
}

func decodeBody(t *testing.T, res *http.Response, out any) {
	t.Helper()
	defer res.Body.Close()
	if err := json.NewDecoder(res.Body).Decode(out); err != nil || res.StatusCode != 200 {
		t.Fatalf("%s: %v", res.Status, err)
	}
}

func decodeRaw(t *testing.T, raw []byte, out any) error {
	t.Helper()
	return json.Unmarshal(raw, out)
}

// The OpenAPI document lists the same views and sides as the vocabulary.
func TestOpenAPIEnumsAreTheVocabulary(t *testing.T) {
	doc := loadOpenAPI(t)
	for _, schema := range []string{"Metadata", "MetadataPatch"} {
		props := doc.Components.Schemas[schema].Value.Properties
		for field, terms := range map[string][]fhir.Term{"viewType": fhir.Views, "laterality": fhir.Lateralities} {
			want := []any{""}
			for _, c := range fhir.Codes(terms) {
				want = append(want, c)
			}
			if diff := cmp.Diff(want, props[field].Value.Enum); diff != "" {
				t.Errorf("%s.%s enum (-vocabulary +openapi):\n%s", schema, field, diff)
			}
		}
	}
}

// The desktop says another patient is open: the session takes nothing, not
// from the phone either, and the phone is told it is held, not who is open.
// The session's own patient lifts the hold.
func TestOpenPatientHoldsTheSession(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	desk := h.desktop("u1")
	if r := h.do("PUT", "/api/users/u1/open-patient", phone, map[string]any{"patientId": "p2"}); r.status != 403 {
		t.Fatalf("phone sets the open patient: %d", r.status)
	}
	if r := h.do("PUT", "/api/users/u1/open-patient", desk, map[string]any{"patientId": "p 2"}); r.status != 400 {
		t.Fatalf("bad patient id: %d", r.status)
	}
	if r := h.do("PUT", "/api/users/u1/open-patient", desk, map[string]any{"patientId": "p2"}); r.status != 200 || r.body["held"] != true {
		t.Fatalf("open p2: %d %s", r.status, r.raw)
	}
	key, id := h.upload("u1", phone, jpegBytes)
	r := h.do("POST", "/api/users/u1/images", phone, map[string]any{"imageId": id, "s3Key": key, "source": "mobile"})
	if r.status != 409 || r.body["code"] != "patient_mismatch" {
		t.Fatalf("phone adds to a held session: %d %s", r.status, r.raw)
	}
	g := h.do("GET", "/api/users/u1/session", phone, nil)
	if g.body["held"] != true || strings.Contains(string(g.raw), "p2") {
		t.Fatalf("phone's view of a held session: %s", g.raw)
	}
	if r := h.do("PUT", "/api/users/u1/open-patient", desk, map[string]any{"patientId": "p1"}); r.status != 200 || r.body["held"] != false {
		t.Fatalf("open p1 again: %d %s", r.status, r.raw)
	}
	if r := h.do("POST", "/api/users/u1/images", phone, map[string]any{"imageId": id, "s3Key": key, "source": "mobile"}); r.status != 200 {
		t.Fatalf("phone adds once the session's patient is open again: %d %s", r.status, r.raw)
	}
}
