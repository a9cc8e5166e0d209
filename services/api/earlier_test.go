package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// photoJPEG is a w×h JPEG of one colour.
func photoJPEG(t testing.TB, w, h int, c color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = c.R, c.G, c.B, 255
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// earlierAnswer is GET earlier-photos as the widget reads it.
type earlierAnswer struct {
	State   string `json:"state"`
	Message string `json:"message"`
	Photos  []struct {
		ID       string     `json:"id"`
		Taken    *time.Time `json:"taken"`
		BodySite *struct {
			Code    string `json:"code"`
			Display string `json:"display"`
		} `json:"bodySite"`
		Laterality string `json:"laterality"`
		View       string `json:"view"`
		Note       string `json:"note"`
		PreviewURL string `json:"previewUrl"`
		PreviewKey string `json:"previewKey"`
	} `json:"photos"`
	Code string `json:"code"`
}

// earlier reads GET earlier-photos and checks the answer against the
// OpenAPI document's schema for its status.
func (h *harness) earlier(user, token string) (int, earlierAnswer, []byte) {
	h.t.Helper()
	r := h.do("GET", "/api/users/"+user+"/earlier-photos", token, nil)
	var a earlierAnswer
	if err := json.Unmarshal(r.raw, &a); err != nil {
		h.t.Fatalf("earlier-photos: %d, not JSON: %s", r.status, r.raw)
	}
	op := loadOpenAPI(h.t).Paths.Find("/api/users/{userId}/earlier-photos").Get
	if resp := op.Responses.Status(r.status); resp == nil {
		h.t.Errorf("earlier-photos: status %d not documented", r.status)
	} else if err := resp.Value.Content.Get("application/json").Schema.Value.VisitJSON(r.body, openapi3.EnableJSONSchema2020()); err != nil {
		h.t.Errorf("earlier-photos %d: not as documented: %v\n%s", r.status, err, r.raw)
	}
	return r.status, a, r.raw
}

func searches(sim *alexsim.Server) int {
	n := 0
	for _, r := range sim.Requests() {
		if r.Method == "GET" && r.Path == "/FHIR/Media" {
			n++
		}
	}
	return n
}

// Issue 16, part 3: a patient with Media from two earlier sessions gets
// them through the API from ALEX (the practice's credentials, server side),
// newest first with date, body site, side, view and note, each with a
// preview the browser can load; another patient's stay out; a patient with
// no Media, and one without an NHI, get a clear empty state; ALEX failing
// is a 503 with a code and is asked again next time; a reload does not ask
// ALEX again; the previews go with the session; nothing clinical, no NHI
// and no token reaches the logs.
func TestEarlierPhotos(t *testing.T) {
	sim := alexsim.New(alexsim.Options{})
	ts := httptest.NewServer(sim)
	t.Cleanup(ts.Close)
	env := sim.Env(ts.URL)
	h := newHarness(t, func(c *Config) {
		c.ALEX = &fhir.Config{BaseURL: env["ALEX_API_URL"], TokenURL: env["ALEX_OAUTH_TOKEN_URL"],
			ClientID: env["ALEX_CLIENT_ID"], ClientSecret: env["ALEX_CLIENT_SECRET"], Scope: env["ALEX_SCOPE"],
			FacilityID: env["ALEX_FACILITY_ID"], Timeout: 10 * time.Second}
	})
	for id, nhi := range map[string]string{"p1": "ZAA0067", "p2": "ZZZ0016", "p3": "ZBB1234", "p4": "", "p5": "ZCC5678"} {
		sim.AddPatient(id, nhi)
	}
	day := func(m time.Month, d int) time.Time { return time.Date(2026, m, d, 9, 30, 0, 0, time.UTC) }
	seed := func(patient string, taken time.Time, site, side, view, note string, photo []byte) string {
		return sim.Seed(fhir.NewMedia(fhir.Photo{ImageID: "seed-" + note, PatientID: patient, CapturedAt: taken,
			ContentType: "image/jpeg", BodySite: site, BodySiteDisplay: map[string]string{"14975008": "Forearm structure", "85562004": "Hand structure"}[site],
			Laterality: side, ViewType: view, Notes: note}), photo).ID
	}
	big := photoJPEG(t, 2400, 1600, color.RGBA{200, 120, 90, 255})
	// p1's first session in March (the forearm and the hand), the second in
	// May (the forearm again); p2's forearm.
	march := seed("p1", day(3, 2), "14975008", "left", "close-up", "lesion 4 mm march", big)
	hand := seed("p1", day(3, 2).Add(time.Minute), "85562004", "right", "", "hand march", photoJPEG(t, 40, 30, color.RGBA{10, 200, 10, 255}))
	may := seed("p1", day(5, 9), "14975008", "left", "close-up", "lesion 6 mm may", photoJPEG(t, 300, 400, color.RGBA{90, 90, 220, 255}))
	other := seed("p2", day(4, 1), "14975008", "", "", "someone else", big)

	p1 := h.desktop("u1")
	h.start("u1", "p1")
	status, got, raw := h.earlier("u1", p1)
	if status != 200 || got.State != "ok" {
		t.Fatalf("p1: %d %s", status, raw)
	}
	type row struct{ ID, Site, Display, Side, View, Note string }
	var rows []row
	for _, p := range got.Photos {
		r := row{ID: p.ID, Side: p.Laterality, View: p.View, Note: p.Note}
		if p.BodySite != nil {
			r.Site, r.Display = p.BodySite.Code, p.BodySite.Display
		}
		rows = append(rows, r)
		if p.Taken == nil || p.PreviewKey != "" {
			t.Errorf("%s: taken %v, preview key %q (never answered)", p.ID, p.Taken, p.PreviewKey)
		}
	}
	want := []row{
		{may, "14975008", "Forearm structure (left)", "left", "Close-up", "lesion 6 mm may"},
		{hand, "85562004", "Hand structure (right)", "right", "", "hand march"},
		{march, "14975008", "Forearm structure (left)", "left", "Close-up", "lesion 4 mm march"},
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("p1's earlier photos, newest first (-want +got):\n%s", diff)
	}
	if strings.Contains(string(raw), other) || strings.Contains(string(raw), "someone else") {
		t.Errorf("p1's answer carries p2's Media: %s", raw)
	}
	// Each preview loads as a JPEG no larger than the preview size, the
	// 2400×1600 photo shrunk to 1024×682.
	for i, p := range got.Photos {
		resp, err := http.Get(p.PreviewURL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cfg, err := jpeg.DecodeConfig(bytes.NewReader(b))
		if resp.StatusCode != 200 || err != nil {
			t.Fatalf("preview of %s: %d %v", p.ID, resp.StatusCode, err)
		}
		if i == 2 && (cfg.Width != 1024 || cfg.Height != 682) {
			t.Errorf("preview of the 2400×1600 photo is %d×%d, want 1024×682", cfg.Width, cfg.Height)
		}
		if max(cfg.Width, cfg.Height) > earlierPreviewSize {
			t.Errorf("preview of %s is %d×%d", p.ID, cfg.Width, cfg.Height)
		}
	}

	// A reload answers from the session's cache: ALEX is not searched again.
	n := searches(sim)
	if status, again, _ := h.earlier("u1", p1); status != 200 || len(again.Photos) != 3 || searches(sim) != n {
		t.Errorf("reload: %d, %d photos, ALEX searched %d more times", status, len(again.Photos), searches(sim)-n)
	}

	// Desktop only, and only the caller's own.
	phone := h.start("u9", "p1")
	if r := h.do("GET", "/api/users/u9/earlier-photos", phone, nil); r.status != 403 {
		t.Errorf("phone: %d %s, want 403", r.status, r.raw)
	}
	if r := h.do("GET", "/api/users/u1/earlier-photos", h.desktop("u2"), nil); r.status != 403 {
		t.Errorf("another GP: %d %s, want 403", r.status, r.raw)
	}
	if r := h.do("GET", "/api/users/nobody/earlier-photos", h.desktop("nobody"), nil); r.status != 404 || r.body["code"] != "session_not_found" {
		t.Errorf("no session: %d %s, want 404 session_not_found", r.status, r.raw)
	}

	// Another patient sees only their own.
	h.start("u2", "p2")
	status, got, _ = h.earlier("u2", h.desktop("u2"))
	if status != 200 || len(got.Photos) != 1 || got.Photos[0].ID != other {
		t.Errorf("p2: %d %+v", status, got)
	}

	// No Media, no NHI: a sentence, not an error.
	for _, c := range []struct{ user, patient, state string }{{"u3", "p3", "none"}, {"u4", "p4", "no_nhi"}, {"u6", "unknown-to-alex", "no_nhi"}} {
		h.start(c.user, c.patient)
		status, got, raw := h.earlier(c.user, h.desktop(c.user))
		if status != 200 || got.State != c.state || got.Message == "" || got.Photos == nil || len(got.Photos) != 0 {
			t.Errorf("%s: %d %s, want state %s with a message and no photos", c.patient, status, raw, c.state)
		}
	}

	// ALEX failing: 503 with a code, nothing cached; once ALEX is back the
	// photos come.
	h.start("u5", "p5")
	seed("p5", day(6, 1), "14975008", "", "", "p5 forearm", photoJPEG(t, 20, 20, color.RGBA{1, 2, 3, 255}))
	remove := sim.Inject(alexsim.Rule{Method: "GET", Path: "/Media", Times: -1, Fault: alexsim.Fault{Status: 503}})
	status, got, raw = h.earlier("u5", h.desktop("u5"))
	if status != 503 || got.Code != "alex_unavailable" {
		t.Errorf("ALEX down: %d %s, want 503 alex_unavailable", status, raw)
	}
	remove()
	if status, got, raw := h.earlier("u5", h.desktop("u5")); status != 200 || len(got.Photos) != 1 {
		t.Errorf("ALEX back: %d %s", status, raw)
	}
	// A refusal (a facility ALEX does not know) is a 502.
	h2 := newHarness(t, func(c *Config) {
		c.ALEX = &fhir.Config{BaseURL: env["ALEX_API_URL"], TokenURL: env["ALEX_OAUTH_TOKEN_URL"],
			ClientID: env["ALEX_CLIENT_ID"], ClientSecret: env["ALEX_CLIENT_SECRET"], Scope: env["ALEX_SCOPE"],
			FacilityID: "F0NOPE-X", Timeout: 10 * time.Second}
	})
	h2.start("u1", "p1")
	if status, got, raw := h2.earlier("u1", h2.desktop("u1")); status != 502 || got.Code != "alex_unavailable" {
		t.Errorf("ALEX refusing: %d %s, want 502 alex_unavailable", status, raw)
	}

	// Not configured: a clear state.
	h3 := newHarness(t)
	h3.start("u1", "p1")
	if status, got, raw := h3.earlier("u1", h3.desktop("u1")); status != 200 || got.State != "not_configured" || got.Message == "" {
		t.Errorf("no ALEX: %d %s", status, raw)
	}

	ctx := context.Background()
	keysOf := func(user, patient string) []string {
		sid, err := h.store.SessionIDOf(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, id := range []string{march, hand, may, other} {
			k := previewKey(user, sid, id)
			if _, err := h.objects.Head(ctx, k); err == nil {
				out = append(out, k)
			}
		}
		return out
	}
	// Another patient's session replaces u1's: its previews go at once.
	u1Keys := keysOf("u1", "p1")
	if len(u1Keys) != 3 {
		t.Fatalf("u1 holds %d previews, want 3", len(u1Keys))
	}
	h.start("u1", "p3")
	for _, k := range u1Keys {
		if _, err := h.objects.Head(ctx, k); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("%s outlived its session: %v", k, err)
		}
	}
	// u2's session expires: the sweep deletes its previews with its photos.
	u2Keys := keysOf("u2", "p2")
	if len(u2Keys) != 1 {
		t.Fatalf("u2 holds %d previews, want 1", len(u2Keys))
	}
	h.rdb.Del(ctx, h.store.Keys.User("u2"))
	later := session.NewStore(h.rdb, session.Options{Prefix: string(h.store.Keys), Now: func() time.Time { return time.Now().Add(3 * time.Hour) }})
	if err := (sweeper{store: later, objects: h.objects, every: time.Second, log: slog.New(slog.DiscardHandler)}).once(ctx); err != nil {
		t.Fatal(err)
	}
	for _, k := range u2Keys {
		if _, err := h.objects.Head(ctx, k); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("%s outlived the expired session: %v", k, err)
		}
	}

	// The logs say what happened, never the notes, an NHI or a token.
	logs := strings.Join(h.logs.Lines(), "")
	if !strings.Contains(logs, "earlier.fetched") || !strings.Contains(logs, "earlier.alex_failed") {
		t.Errorf("logs lack earlier.fetched or earlier.alex_failed")
	}
	for _, secret := range []string{"lesion", "hand march", "someone else", "ZAA0067", "ZZZ0016", "ZCC5678", "access_token", "Bearer"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs carry %q", secret)
		}
	}
}

// An earlier photo's preview is upright (EXIF orientation applied), small,
// and carries none of the original's metadata; a format the API cannot
// decode gets no preview.
func TestPreviewJPEG(t *testing.T) {
	for _, o := range []int{1, 6, 3, 8} {
		out, err := previewJPEG(hygienetest.GPSJPEG(o), 320)
		if err != nil {
			t.Fatalf("orientation %d: %v", o, err)
		}
		img, err := jpeg.Decode(bytes.NewReader(out))
		if err != nil {
			t.Fatal(err)
		}
		if b := img.Bounds(); b.Dx() != 320 || b.Dy() != 240 {
			t.Errorf("orientation %d: %v, want 320×240 upright", o, b)
		}
		// The scene's top left is red once upright.
		if r, g, b, _ := img.At(20, 20).RGBA(); r>>8 < 150 || g>>8 > 90 || b>>8 > 90 {
			t.Errorf("orientation %d: top left is not red (%d,%d,%d): not upright", o, r>>8, g>>8, b>>8)
		}
		for _, s := range hygienetest.Secrets {
			if bytes.Contains(out, []byte(s)) {
				t.Errorf("orientation %d: preview carries %q", o, s)
			}
		}
	}
	for name, b := range map[string][]byte{"webp": []byte("RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00"), "text": []byte("not a photo"), "empty": nil} {
		if _, err := previewJPEG(b, 320); err == nil {
			t.Errorf("%s: a preview, want none", name)
		}
	}
}

// ALEX settings are optional for the API, and complete when given.
func TestConfigALEXOptional(t *testing.T) {
	base := map[string]string{"AUTH_JWKS_URL": "https://idp.test/jwks", "AUTH_ISSUER": "https://idp.test", "AUTH_AUDIENCE": "clinimg", "REALTIME_SIGNING_KEY": "k1:" + strings.Repeat("s", 43)}
	read := func(extra map[string]string) (Config, error) {
		return ConfigFromEnv(func(k string) string {
			if v, ok := extra[k]; ok {
				return v
			}
			return base[k]
		})
	}
	if c, err := read(nil); err != nil || c.ALEX != nil {
		t.Fatalf("without ALEX_API_URL: %+v %v, want no ALEX and no error", c.ALEX, err)
	}
	_, err := read(map[string]string{"ALEX_API_URL": "https://alex.test/FHIR"})
	for _, name := range []string{"ALEX_OAUTH_TOKEN_URL", "ALEX_CLIENT_ID", "ALEX_CLIENT_SECRET", "ALEX_SCOPE", "ALEX_FACILITY_ID"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("ALEX_API_URL alone: %v, want %s reported", err, name)
		}
	}
	c, err := read(map[string]string{"ALEX_API_URL": "https://alex.test/FHIR", "ALEX_OAUTH_TOKEN_URL": "https://login.test/token",
		"ALEX_CLIENT_ID": "id", "ALEX_CLIENT_SECRET": "s3cret", "ALEX_SCOPE": "api://x/.default", "ALEX_FACILITY_ID": "F2N060-E"})
	if err != nil || c.ALEX == nil || c.ALEX.ClientSecret != "s3cret" || c.ALEX.Timeout != 15*time.Second {
		t.Fatalf("complete ALEX settings: %+v %v", c.ALEX, err)
	}
}
