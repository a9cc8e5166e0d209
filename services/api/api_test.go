package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/devissuer"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/audit"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/jwtauth"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// harness is the API on real Redis (own prefix), a signature-checking S3
// server and an embedded JetStream server.
type harness struct {
	t       testing.TB
	rdb     *redis.Client
	srv     *httptest.Server
	store   *session.Store
	objects *blob.Store
	issuer  *devissuer.Issuer
	cfg     Config
	logs    *testenv.Logs
}

func newHarness(t *testing.T, tweak ...func(*Config)) *harness { return newHarnessTB(t, tweak...) }

func newHarnessTB(t testing.TB, tweak ...func(*Config)) *harness {
	t.Helper()
	objects, _ := testenv.S3(t)
	rdb, prefix := testenv.Redis(t)
	return newHarnessOn(t, rdb, prefix, objects, tweak...)
}

// newHarnessOn is the harness on the Redis rdb under prefix and the bucket
// objects.
func newHarnessOn(t testing.TB, rdb *redis.Client, prefix string, objects *blob.Store, tweak ...func(*Config)) *harness {
	t.Helper()
	_, nc, _ := testenv.JetStream(t)
	issuer, err := devissuer.New("https://idp.test", "clinimg")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		PublicURL: "https://clinimg.test", DevIssuer: issuer,
		UploadExpiry: 10 * time.Minute, ViewExpiry: 15 * time.Minute,
		MaxImageBytes: 1 << 20, MaxImages: 50, CommitWait: 2 * time.Second, ConsentRequired: true,
		Realtime: realtime.Settings{Mode: realtime.ModeSSE, Key: realtime.GenerateKey("test"), URL: "http://relay.test/sse", TTL: time.Hour},
	}
	for _, f := range tweak {
		f(&cfg)
	}
	store := session.NewStore(rdb, session.Options{Prefix: prefix, MaxImages: cfg.MaxImages, MaxPhones: cfg.MaxPhones, RequireConsent: cfg.ConsentRequired, MaxUploads: cfg.MaxUploads})
	log, logs := testenv.Logger(t)
	waiter, err := NewWaiter(nc, events.DefaultNames, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(waiter.Close)
	verifier := issuer.Verifier()
	if cfg.JWKSURL != "" {
		verifier = jwtauth.NewVerifier(jwtauth.NewJWKS(cfg.JWKSURL), cfg.Issuer, cfg.Audience)
	}
	deps := Deps{Store: store, Redis: rdb, Objects: objects, Verifier: verifier, Waiter: waiter, Logger: log, Audit: audit.NewStore(objects)}
	if cfg.ALEX != nil {
		alexCfg := *cfg.ALEX
		alexCfg.Logger = log
		c, err := fhir.NewClient(alexCfg)
		if err != nil {
			t.Fatal(err)
		}
		deps.ALEX = c
	}
	s := NewServer(cfg, deps)
	h := &harness{t: t, rdb: rdb, srv: httptest.NewServer(s.Router()), store: store, objects: objects, issuer: issuer, cfg: cfg, logs: logs}
	t.Cleanup(h.srv.Close)
	return h
}

func (h *harness) desktop(userID string) string {
	tok, err := h.issuer.Token(userID, time.Hour)
	if err != nil {
		h.t.Fatal(err)
	}
	return tok
}

type response struct {
	status int
	body   map[string]any
	raw    []byte
}

func (h *harness) do(method, path, token string, body any, headers ...string) response {
	h.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		r = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, h.srv.URL+path, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := response{status: resp.StatusCode, raw: raw}
	_ = json.Unmarshal(raw, &out.body)
	return out
}

// start opens a session for user and pairs a phone; it returns the phone
// credential.
func (h *harness) start(user, patient string) string {
	h.t.Helper()
	r := h.do("POST", "/api/session-tokens", h.desktop(user), map[string]any{"patientId": patient, "encounterId": "enc_1"})
	if r.status != 200 {
		h.t.Fatalf("start: %d %s", r.status, r.raw)
	}
	x := h.do("GET", "/api/session-tokens/"+r.body["sessionToken"].(string), "", nil)
	if x.status != 200 {
		h.t.Fatalf("exchange: %d %s", x.status, x.raw)
	}
	return x.body["phoneToken"].(string)
}

var jpegBytes = append([]byte{0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0}, bytes.Repeat([]byte{0x42}, 2000)...)

// upload presigns and PUTs body as the phone would, returning the key.
func (h *harness) upload(user, token string, body []byte) (key, imageID string) {
	h.t.Helper()
	r := h.do("POST", "/api/users/"+user+"/presigned-url", token, map[string]any{"fileName": "IMG_0001.JPG", "contentType": "image/jpeg", "contentLength": len(body)})
	if r.status != 200 {
		h.t.Fatalf("presign: %d %s", r.status, r.raw)
	}
	put(h.t, r.body["uploadUrl"].(string), "image/jpeg", body, http.StatusOK)
	return r.body["s3Key"].(string), r.body["imageId"].(string)
}

func put(t testing.TB, url, contentType string, body []byte, want int) {
	t.Helper()
	req, _ := http.NewRequest("PUT", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("PUT: status %d, want %d: %s", resp.StatusCode, want, raw)
	}
}

func (h *harness) record(user, token string) string {
	h.t.Helper()
	key, id := h.upload(user, token, jpegBytes)
	r := h.do("POST", "/api/users/"+user+"/images", token, map[string]any{"imageId": id, "s3Key": key, "source": "mobile"})
	if r.status != 200 {
		h.t.Fatalf("record: %d %s", r.status, r.raw)
	}
	return id
}

// consent records verbal consent for the clinical record, as a GP does
// before committing (CONSENT_REQUIRED is on in the harness, as by default).
func (h *harness) consent(user, token string) {
	h.t.Helper()
	if r := h.do("PUT", "/api/users/"+user+"/consent", token, map[string]any{"method": "verbal", "purposes": []string{"record"}}); r.status != 200 {
		h.t.Fatalf("consent: %d %s", r.status, r.raw)
	}
}

func (h *harness) snapshot(user string) string {
	s, err := h.store.Peek(context.Background(), user)
	if err != nil {
		return "no session: " + err.Error()
	}
	s.LastActivity = time.Time{}
	b, _ := json.Marshal(s)
	return string(b)
}

// The seeds' flow end to end against the API: token, validate, presign,
// PUT, record, session.
func TestSeedFlow(t *testing.T) {
	h := newHarness(t)
	phone := h.start("user_abc", "12345")
	id := h.record("user_abc", phone)
	r := h.do("GET", "/api/users/user_abc/session", phone, nil)
	if r.status != 200 {
		t.Fatalf("session: %d %s", r.status, r.raw)
	}
	var s session.Session
	if err := json.Unmarshal(r.raw, &s); err != nil {
		t.Fatal(err)
	}
	if s.PatientID != "12345" || s.EncounterID != "enc_1" || s.CommitStatus != "none" || len(s.Images) != 1 {
		t.Fatalf("session: %+v", s)
	}
	im := s.Images[0]
	if im.ID != id || !im.Uploaded || im.Source != "mobile" || im.ContentType != "image/jpeg" || im.S3URL == "" || im.Status != "processing" {
		t.Fatalf("image: %+v", im)
	}
	// The read URL really reads the photo back.
	resp, err := http.Get(im.S3URL)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, jpegBytes) {
		t.Fatalf("read back %d bytes, want %d", len(got), len(jpegBytes))
	}
}

func TestRecordIsIdempotent(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	key, id := h.upload("u1", phone, jpegBytes)
	for range 3 {
		r := h.do("POST", "/api/users/u1/images", phone, map[string]any{"imageId": id, "s3Key": key, "source": "mobile"})
		if r.status != 200 {
			t.Fatalf("record: %d %s", r.status, r.raw)
		}
	}
	s, _ := h.store.Peek(context.Background(), "u1")
	if len(s.Images) != 1 {
		t.Fatalf("%d images after recording one photo three times", len(s.Images))
	}
}

// Promise 7: each bad input gets its status and code and changes nothing.
func TestBadInputsChangeNothing(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	h.record("u1", phone)
	desk := h.desktop("u1")
	textKey, _ := h.upload("u1", phone, []byte("hello, this is not a photo"))
	expired, _ := devissuer.New("https://idp.test", "clinimg")
	otherIssuer, _ := devissuer.New("https://idp.test", "clinimg")
	forged, _ := otherIssuer.Token("u1", time.Hour)
	expiredTok, _ := expired.Token("u1", -time.Hour)
	big := `{"contentType":"image/jpeg","fileName":"` + strings.Repeat("a", 70<<10) + `"}`

	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		headers                   []string
		wantStatus                int
		wantCode                  string
	}{
		{"no token", "GET", "/api/users/u1/session", "", nil, nil, 401, "unauthenticated"},
		{"garbage token", "GET", "/api/users/u1/session", "not-a-jwt", nil, nil, 401, "unauthenticated"},
		{"forged token", "GET", "/api/users/u1/session", forged, nil, nil, 401, "unauthenticated"},
		{"expired token", "GET", "/api/users/u1/session", expiredTok, nil, nil, 401, "unauthenticated"},
		{"unknown phone credential", "GET", "/api/users/u1/session", "ph_nope", nil, nil, 401, "unauthenticated"},
		{"malformed JSON", "POST", "/api/users/u1/presigned-url", phone, `{"contentType":`, nil, 400, "invalid_json"},
		{"wrong type", "POST", "/api/users/u1/presigned-url", phone, `{"contentType": 7}`, nil, 400, "invalid_json"},
		{"unknown field", "POST", "/api/users/u1/presigned-url", phone, `{"contentType":"image/jpeg","bucket":"x"}`, nil, 400, "invalid_json"},
		{"two objects", "POST", "/api/users/u1/presigned-url", phone, `{"contentType":"image/jpeg"}{}`, nil, 400, "invalid_json"},
		{"not an image type", "POST", "/api/users/u1/presigned-url", phone, `{"contentType":"text/html"}`, nil, 415, "unsupported_image_type"},
		{"negative length", "POST", "/api/users/u1/presigned-url", phone, `{"contentType":"image/jpeg","contentLength":-1}`, nil, 400, "invalid_content_length"},
		{"length over limit", "POST", "/api/users/u1/presigned-url", phone, `{"contentType":"image/jpeg","contentLength":99999999}`, nil, 413, "too_large"},
		{"body over limit", "POST", "/api/users/u1/presigned-url", phone, big, nil, 413, "body_too_large"},
		{"wrong content type", "POST", "/api/users/u1/presigned-url", phone, `{"contentType":"image/jpeg"}`, []string{"Content-Type", "text/plain"}, 415, "unsupported_media_type"},
		{"empty body", "POST", "/api/users/u1/images", phone, " ", nil, 400, "invalid_json"},
		{"bad image id", "POST", "/api/users/u1/images", phone, `{"imageId":"../x","s3Key":"temp/u1/a.jpg","source":"mobile"}`, nil, 400, "invalid_image_id"},
		{"bad source", "POST", "/api/users/u1/images", phone, `{"imageId":"a","s3Key":"temp/u1/a.jpg","source":"fax"}`, nil, 400, "invalid_source"},
		{"key outside prefix", "POST", "/api/users/u1/images", phone, `{"imageId":"a","s3Key":"temp/u2/a.jpg","source":"mobile"}`, nil, 403, "key_outside_prefix"},
		{"key traversal", "POST", "/api/users/u1/images", phone, `{"imageId":"a","s3Key":"temp/u1/../u2/a.jpg","source":"mobile"}`, nil, 400, "invalid_s3_key"},
		{"key not issued", "POST", "/api/users/u1/images", phone, `{"imageId":"a","s3Key":"temp/u1/a.exe","source":"mobile"}`, nil, 400, "invalid_s3_key"},
		{"object missing", "POST", "/api/users/u1/images", phone, `{"imageId":"a","s3Key":"temp/u1/missing.jpg","source":"mobile"}`, nil, 422, "object_missing"},
		{"not an image", "POST", "/api/users/u1/images", phone, `{"imageId":"a","s3Key":"` + textKey + `","source":"mobile"}`, nil, 422, "not_an_image"},
		{"bad laterality", "POST", "/api/users/u1/images", phone, `{"imageId":"a","s3Key":"temp/u1/x.jpg","source":"mobile","metadata":{"bodySite":"","laterality":"up"}}`, nil, 400, "invalid_metadata"},
		{"metadata wrong type", "PATCH", "/api/users/u1/images/a", desk, `{"notes": 5}`, nil, 400, "invalid_json"},
		{"unknown image patch", "PATCH", "/api/users/u1/images/nope", desk, `{"notes":"x"}`, nil, 404, "image_not_found"},
		{"unknown image delete", "DELETE", "/api/users/u1/images/nope", desk, nil, nil, 404, "image_not_found"},
		{"note with NUL", "PATCH", "/api/users/u1/images/nope", desk, `{"notes":"a\u0000b"}`, nil, 400, "invalid_text"},
		{"note with ESC", "POST", "/api/users/u1/images", phone, `{"imageId":"a","s3Key":"temp/u1/x.jpg","source":"mobile","metadata":{"notes":"\u001b[31mred"}}`, nil, 400, "invalid_text"},
		{"note with RLO", "PATCH", "/api/users/u1/images/nope", desk, `{"metadata":{"notes":"left \u202e thgir"}}`, nil, 400, "invalid_text"},
		{"note with CR", "PATCH", "/api/users/u1/images/nope", desk, `{"notes":"a\rb"}`, nil, 400, "invalid_text"},
		{"body site with isolate", "PATCH", "/api/users/u1/images/nope", desk, `{"bodySite":"arm\u2067"}`, nil, 400, "invalid_text"},
		{"unknown SNOMED body site", "PATCH", "/api/users/u1/images/nope", desk, `{"bodySite":"123456789"}`, nil, 400, "unknown_body_site"},
		{"bad view", "PATCH", "/api/users/u1/images/nope", desk, `{"viewType":"sideways"}`, nil, 400, "invalid_metadata"},
		{"commit with body", "POST", "/api/users/u1/commit", desk, `{"all": true}`, nil, 400, "invalid_json"},
		{"phone cannot start", "POST", "/api/session-tokens", phone, `{"patientId":"p9","encounterId":"e9"}`, nil, 403, "forbidden"},
		{"missing patient", "POST", "/api/session-tokens", desk, `{"encounterId":"e9"}`, nil, 400, "invalid_patient_id"},
		{"bad encounter", "POST", "/api/session-tokens", desk, `{"patientId":"p9","encounterId":"a b"}`, nil, 400, "invalid_encounter_id"},
		{"unknown QR token", "GET", "/api/session-tokens/0123456789abcdef0123456789abcdef", "", nil, nil, 404, "token_invalid"},
		{"malformed QR token", "GET", "/api/session-tokens/%2e%2e", "", nil, nil, 404, "token_invalid"},
		{"unknown route", "GET", "/api/nothing", desk, nil, nil, 404, "not_found"},
		{"wrong method", "PUT", "/api/users/u1/session", desk, nil, nil, 405, "method_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snapshot("u1")
			r := h.do(tc.method, tc.path, tc.token, tc.body, tc.headers...)
			if r.status != tc.wantStatus || r.body["code"] != tc.wantCode {
				t.Fatalf("got %d %v, want %d %s: %s", r.status, r.body["code"], tc.wantStatus, tc.wantCode, r.raw)
			}
			if msg, _ := r.body["error"].(string); msg == "" {
				t.Fatalf("no error message: %s", r.raw)
			}
			if diff := cmp.Diff(before, h.snapshot("u1")); diff != "" {
				t.Fatalf("session changed (-before +after):\n%s", diff)
			}
		})
	}
}

// Promise 6: every /api/users/:userId route refuses another user's
// credential, desktop or phone, and reveals nothing of the session.
func TestOtherUsersCredentialIsForbidden(t *testing.T) {
	h := newHarness(t)
	phoneA := h.start("alice", "p1")
	imgA := h.record("alice", phoneA)
	phoneB := h.start("bob", "p2")
	creds := map[string]string{"bob desktop": h.desktop("bob"), "bob phone": phoneB}
	routes := []struct{ method, path, body string }{
		{"POST", "/api/users/alice/presigned-url", `{"contentType":"image/jpeg"}`},
		{"POST", "/api/users/alice/images", `{"imageId":"x","s3Key":"temp/alice/x.jpg","source":"mobile"}`},
		{"PATCH", "/api/users/alice/images/" + imgA, `{"notes":"mine now"}`},
		{"DELETE", "/api/users/alice/images/" + imgA, ""},
		{"GET", "/api/users/alice/session", ""},
		{"POST", "/api/users/alice/commit", ""},
		{"GET", "/api/users/alice/commit", ""},
		{"GET", "/api/users/alice/realtime-token", ""},
	}
	before := h.snapshot("alice")
	for name, cred := range creds {
		for _, rt := range routes {
			t.Run(name+" "+rt.method+" "+rt.path, func(t *testing.T) {
				var body any
				if rt.body != "" {
					body = rt.body
				}
				r := h.do(rt.method, rt.path, cred, body)
				if r.status != 403 || r.body["code"] != "forbidden" {
					t.Fatalf("got %d %s", r.status, r.raw)
				}
				for _, leak := range []string{"p1", imgA, "temp/alice", "patientId", "images"} {
					if bytes.Contains(r.raw, []byte(leak)) {
						t.Fatalf("403 body reveals %q: %s", leak, r.raw)
					}
				}
			})
		}
	}
	if diff := cmp.Diff(before, h.snapshot("alice")); diff != "" {
		t.Fatalf("alice's session changed:\n%s", diff)
	}
}

// Promise 4: another patient's session is refused while photos are
// uncommitted, naming how many, unless the GP discards them explicitly.
func TestPatientSwitchNeedsExplicitDiscard(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	key := func() string {
		s, _ := h.store.Peek(context.Background(), "u1")
		return s.Images[0].S3Key
	}
	h.record("u1", phone)
	h.record("u1", phone)
	desk := h.desktop("u1")
	r := h.do("POST", "/api/session-tokens", desk, map[string]any{"patientId": "p2", "encounterId": "enc_2"})
	if r.status != 409 || r.body["code"] != "uncommitted_images" || r.body["count"] != float64(2) {
		t.Fatalf("switch without discard: %d %s", r.status, r.raw)
	}
	oldKey := key()
	// The old phone still works: nothing was replaced.
	if g := h.do("GET", "/api/users/u1/session", phone, nil); g.status != 200 {
		t.Fatalf("old phone after refused switch: %d", g.status)
	}
	r = h.do("POST", "/api/session-tokens", desk, map[string]any{"patientId": "p2", "encounterId": "enc_2", "discard": true})
	if r.status != 200 {
		t.Fatalf("switch with discard: %d %s", r.status, r.raw)
	}
	s, _ := h.store.Peek(context.Background(), "u1")
	if s.PatientID != "p2" || len(s.Images) != 0 {
		t.Fatalf("after discard: patient %s, %d images", s.PatientID, len(s.Images))
	}
	// The discarded photo's object is gone and the old phone is shut out.
	if _, err := h.objects.Head(context.Background(), oldKey); err != blob.ErrNotFound {
		t.Fatalf("discarded object still there: %v", err)
	}
	if g := h.do("GET", "/api/users/u1/session", phone, nil); g.status != 410 || g.body["code"] != "session_changed" {
		t.Fatalf("old phone after discard: %d %s", g.status, g.raw)
	}
}

func TestQRTokenIsSingleUse(t *testing.T) {
	h := newHarness(t)
	r := h.do("POST", "/api/session-tokens", h.desktop("u1"), map[string]any{"patientId": "p1", "encounterId": "e1"})
	tok := r.body["sessionToken"].(string)
	if len(tok) != 32 || !strings.HasPrefix(r.body["qrCodeUrl"].(string), "https://clinimg.test/mobile?token=") ||
		!strings.HasPrefix(r.body["qrCodeImage"].(string), "data:image/png;base64,") {
		t.Fatalf("start: %s", r.raw)
	}
	first := h.do("GET", "/api/session-tokens/"+tok, "", nil)
	if first.status != 200 || first.body["valid"] != true || first.body["patientId"] != "p1" || first.body["userId"] != "u1" {
		t.Fatalf("first use: %d %s", first.status, first.raw)
	}
	second := h.do("GET", "/api/session-tokens/"+tok, "", nil)
	if second.status != 410 || second.body["valid"] != false || second.body["code"] != "token_used" {
		t.Fatalf("second use: %d %s", second.status, second.raw)
	}
}

// Promise 7 for uploads: the presigned PUT works for a client that sends only
// Content-Type; the S3 server refuses it expired, tampered, with another
// content type, or with a body over the signed length.
func TestPresignedUpload(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	presign := func(body map[string]any) string {
		r := h.do("POST", "/api/users/u1/presigned-url", phone, body)
		if r.status != 200 {
			t.Fatalf("presign: %d %s", r.status, r.raw)
		}
		if k := r.body["s3Key"].(string); !strings.HasPrefix(k, "temp/u1/") || !strings.HasSuffix(k, ".jpg") {
			t.Fatalf("key %q", k)
		}
		return r.body["uploadUrl"].(string)
	}
	t.Run("content type only", func(t *testing.T) {
		u := presign(map[string]any{"fileName": "x.exe", "contentType": "image/jpeg", "contentLength": len(jpegBytes)})
		if strings.Contains(u, "server-side-encryption") {
			t.Fatal("the URL signs an encryption header the seeds' client never sends")
		}
		put(t, u, "image/jpeg", jpegBytes, 200)
	})
	t.Run("tampered signature", func(t *testing.T) {
		u := presign(map[string]any{"contentType": "image/jpeg", "contentLength": len(jpegBytes)})
		i := strings.Index(u, "X-Amz-Signature=") + len("X-Amz-Signature=")
		flip := map[byte]byte{'0': '1'}
		c := u[i]
		if f, ok := flip[c]; ok {
			c = f
		} else {
			c = '0'
		}
		put(t, u[:i]+string(c)+u[i+1:], "image/jpeg", jpegBytes, 403)
	})
	t.Run("other content type", func(t *testing.T) {
		put(t, presign(map[string]any{"contentType": "image/jpeg", "contentLength": len(jpegBytes)}), "text/html", jpegBytes, 403)
	})
	t.Run("body over signed length", func(t *testing.T) {
		u := presign(map[string]any{"contentType": "image/jpeg", "contentLength": 100})
		put(t, u, "image/jpeg", jpegBytes, 403)
	})
	t.Run("expired", func(t *testing.T) {
		short := newHarness(t, func(c *Config) { c.UploadExpiry = time.Second })
		p := short.start("u1", "p1")
		r := short.do("POST", "/api/users/u1/presigned-url", p, map[string]any{"contentType": "image/jpeg", "contentLength": len(jpegBytes)})
		u := r.body["uploadUrl"].(string)
		testenv.Eventually(t, 5*time.Second, "the URL to expire", func() bool {
			req, _ := http.NewRequest("PUT", u, bytes.NewReader(jpegBytes))
			req.Header.Set("Content-Type", "image/jpeg")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 403
		})
	})
	t.Run("oversize object deleted on record", func(t *testing.T) {
		small := newHarness(t, func(c *Config) { c.MaxImageBytes = 1000 })
		p := small.start("u1", "p1")
		// A presigned URL is signed for a size within the limit, so an
		// oversize object can only come another way: written directly.
		id := testenv.ID()
		key := "temp/u1/" + id + ".jpg"
		if err := small.objects.Put(context.Background(), key, "image/jpeg", bytes.NewReader(jpegBytes), int64(len(jpegBytes))); err != nil {
			t.Fatal(err)
		}
		r := small.do("POST", "/api/users/u1/images", p, map[string]any{"imageId": id, "s3Key": key, "source": "mobile"})
		if r.status != 422 || r.body["code"] != "too_large" {
			t.Fatalf("record: %d %s", r.status, r.raw)
		}
		if _, err := small.objects.Head(context.Background(), key); err != blob.ErrNotFound {
			t.Fatalf("oversize object kept: %v", err)
		}
	})
}

// A session holds at most MaxUploads presigned uploads neither recorded nor
// expired; recording one frees its place. A desktop without a session gets
// no upload URL.
func TestOutstandingUploadCap(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxUploads = 2 })
	desk := h.desktop("u1")
	presign := func(token string) response {
		return h.do("POST", "/api/users/u1/presigned-url", token, map[string]any{"contentType": "image/jpeg", "contentLength": len(jpegBytes)})
	}
	if r := presign(desk); r.status != 404 || r.body["code"] != "session_not_found" {
		t.Fatalf("no session: %d %s", r.status, r.raw)
	}
	phone := h.start("u1", "p1")
	key, id := h.upload("u1", phone, jpegBytes)
	h.upload("u1", desk, jpegBytes)
	if r := presign(phone); r.status != 429 || r.body["code"] != "upload_limit" {
		t.Fatalf("third outstanding upload: %d %s", r.status, r.raw)
	}
	if r := h.do("POST", "/api/users/u1/images", phone, map[string]any{"imageId": id, "s3Key": key, "source": "mobile"}); r.status != 200 {
		t.Fatalf("record: %d %s", r.status, r.raw)
	}
	if r := presign(desk); r.status != 200 {
		t.Fatalf("after one was recorded: %d %s", r.status, r.raw)
	}
}

func TestImageCapViaAPI(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxImages = 3 })
	phone := h.start("u1", "p1")
	for range 3 {
		h.record("u1", phone)
	}
	key, id := h.upload("u1", phone, jpegBytes)
	r := h.do("POST", "/api/users/u1/images", phone, map[string]any{"imageId": id, "s3Key": key, "source": "mobile"})
	if r.status != 400 || r.body["code"] != "image_limit" {
		t.Fatalf("4th photo: %d %s", r.status, r.raw)
	}
}

func TestMetadataEditAndDelete(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	id := h.record("u1", phone)
	desk := h.desktop("u1")
	r := h.do("PATCH", "/api/users/u1/images/"+id, desk, map[string]any{"bodySite": "368208006", "laterality": "left", "viewType": "anterior", "notes": "lesion 4mm"})
	if r.status != 200 {
		t.Fatalf("patch: %d %s", r.status, r.raw)
	}
	s, _ := h.store.Peek(context.Background(), "u1")
	want := session.Metadata{BodySite: "368208006", BodySiteDisplay: "Left upper arm structure", Laterality: "left", ViewType: "anterior", Notes: "lesion 4mm"}
	if diff := cmp.Diff(want, s.Images[0].Metadata); diff != "" {
		t.Fatalf("metadata (-want +got):\n%s", diff)
	}
	// The display always comes from the code, whatever the client says;
	// notes are stored in NFC (an "e" and a combining acute become "é").
	h.do("PATCH", "/api/users/u1/images/"+id, phone, map[string]any{"bodySite": "14975008", "bodySiteDisplay": "Sole of foot", "notes": "cafe\u0301 au lait\n\tmacule"})
	s, _ = h.store.Peek(context.Background(), "u1")
	if m := s.Images[0].Metadata; m.BodySiteDisplay != "Forearm structure" || m.Notes != "caf\u00e9 au lait\n\tmacule" {
		t.Fatalf("display %q, notes %q: want the code's display and NFC", m.BodySiteDisplay, m.Notes)
	}
	h.do("PATCH", "/api/users/u1/images/"+id, phone, map[string]any{"bodySiteDisplay": "Sole of foot"})
	h.do("PATCH", "/api/users/u1/images/"+id, phone, map[string]any{"bodySite": "left_arm"})
	s, _ = h.store.Peek(context.Background(), "u1")
	if m := s.Images[0].Metadata; m.BodySite != "left_arm" || m.BodySiteDisplay != "" {
		t.Fatalf("free-text site %q kept the display %q", m.BodySite, m.BodySiteDisplay)
	}
	// Wrapped form, clearing notes.
	h.do("PATCH", "/api/users/u1/images/"+id, phone, map[string]any{"metadata": map[string]any{"notes": ""}})
	s, _ = h.store.Peek(context.Background(), "u1")
	if s.Images[0].Metadata.Notes != "" || s.Images[0].Metadata.Laterality != "left" {
		t.Fatalf("after clearing notes: %+v", s.Images[0].Metadata)
	}
	if r := h.do("DELETE", "/api/users/u1/images/"+id, desk, nil); r.status != 200 || r.body["imageId"] != id {
		t.Fatalf("delete: %d %s", r.status, r.raw)
	}
	if _, err := h.objects.Head(context.Background(), s.Images[0].S3Key); err != blob.ErrNotFound {
		t.Fatalf("deleted photo's object kept: %v", err)
	}
}

func TestCommitWithoutCommitterAnswers202(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CommitWait = 100 * time.Millisecond })
	phone := h.start("u1", "p1")
	h.record("u1", phone)
	desk := h.desktop("u1")
	h.consent("u1", desk)
	r := h.do("POST", "/api/users/u1/commit", desk, nil)
	if r.status != 202 || r.body["status"] != "in_progress" || r.body["commitId"] == "" {
		t.Fatalf("commit: %d %s", r.status, r.raw)
	}
	if again := h.do("POST", "/api/users/u1/commit", desk, nil, "Prefer", "respond-async"); again.status != 409 || again.body["code"] != "commit_in_progress" {
		t.Fatalf("second commit: %d %s", again.status, again.raw)
	}
	st := h.do("GET", "/api/users/u1/commit", desk, nil)
	if st.status != 200 || st.body["commitStatus"] != "in_progress" {
		t.Fatalf("status: %d %s", st.status, st.raw)
	}
}

// Promise 6: the desktop's realtime token covers its user's channel, a
// phone's only its session's channel, for minutes, and the phone gets no
// more once removed or once its session is replaced.
func TestRealtimeTokenIsForOneChannel(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	sess, _ := h.store.Peek(context.Background(), "u1")
	r := h.do("GET", "/api/users/u1/realtime-token", phone, nil)
	if r.status != 200 || r.body["channel"] != "session:u1:"+sess.SessionID || r.body["mode"] != "sse" || r.body["sessionId"] != sess.SessionID {
		t.Fatalf("phone token: %d %s", r.status, r.raw)
	}
	claims, err := realtime.Verify(r.body["token"].(string), h.cfg.Realtime.Key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !claims.Allows("session:u1:"+sess.SessionID, "subscribe") || claims.Allows("session:u1", "subscribe") ||
		claims.Allows("session:u2", "subscribe") || claims.Allows("session:u1:"+sess.SessionID, "publish") {
		t.Fatalf("phone capability too wide: %+v", claims)
	}
	if claims.PhoneID() != sess.Phones[0].ID || claims.ExpiresAt.Sub(claims.IssuedAt) > realtime.DefaultPhoneTTL {
		t.Fatalf("phone token names phone %q, lives %s", claims.PhoneID(), claims.ExpiresAt.Sub(claims.IssuedAt))
	}
	d := h.do("GET", "/api/users/u1/realtime-token", h.desktop("u1"), nil)
	dc, err := realtime.Verify(d.body["token"].(string), h.cfg.Realtime.Key, time.Now())
	if d.status != 200 || d.body["channel"] != "session:u1" || err != nil || !dc.Allows("session:u1", "subscribe") || dc.Allows("session:u2", "subscribe") {
		t.Fatalf("desktop token: %d %s %v", d.status, d.raw, err)
	}

	// Removed: no renewal, no API access.
	if rm := h.do("DELETE", "/api/users/u1/phones/"+sess.Phones[0].ID, h.desktop("u1"), nil); rm.status != 200 {
		t.Fatalf("remove: %d %s", rm.status, rm.raw)
	}
	for _, path := range []string{"/api/users/u1/realtime-token", "/api/users/u1/session"} {
		if g := h.do("GET", path, phone, nil); g.status != 410 || g.body["code"] != "phone_removed" {
			t.Fatalf("removed phone %s: %d %s", path, g.status, g.raw)
		}
	}
	// Replaced: the next patient's session ends the old phone's renewals.
	phone2 := h.start("u1", "p1")
	h.do("POST", "/api/session-tokens", h.desktop("u1"), map[string]any{"patientId": "p2", "encounterId": "e2", "discard": true})
	if g := h.do("GET", "/api/users/u1/realtime-token", phone2, nil); g.status != 410 || g.body["code"] != "session_changed" {
		t.Fatalf("phone of a replaced session: %d %s", g.status, g.raw)
	}
}

// The desktop lists the paired phones and removes one; a phone can do
// neither, a new QR code revokes the earlier one, and the phones per
// session are capped.
func TestPhonesListRemoveAndCap(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxPhones = 2 })
	desk := h.desktop("u1")
	qr := func() string {
		r := h.do("POST", "/api/session-tokens", desk, map[string]any{"patientId": "p1", "encounterId": "e1"})
		if r.status != 200 {
			t.Fatalf("start: %d %s", r.status, r.raw)
		}
		return r.body["sessionToken"].(string)
	}
	stale := qr()
	fresh := qr()
	if r := h.do("GET", "/api/session-tokens/"+stale, "", nil); r.status != 410 || r.body["code"] != "token_revoked" || r.body["valid"] != false {
		t.Fatalf("earlier QR code: %d %s", r.status, r.raw)
	}
	one := h.do("GET", "/api/session-tokens/"+fresh, "", nil, "User-Agent", "Phone One")
	two := h.do("GET", "/api/session-tokens/"+qr(), "", nil, "User-Agent", "Phone Two")
	if one.status != 200 || two.status != 200 || one.body["phoneId"] == "" || one.body["phoneId"] == two.body["phoneId"] {
		t.Fatalf("pair: %s / %s", one.raw, two.raw)
	}
	before := h.snapshot("u1")
	if r := h.do("GET", "/api/session-tokens/"+qr(), "", nil); r.status != 409 || r.body["code"] != "phone_limit" {
		t.Fatalf("third phone: %d %s", r.status, r.raw)
	}
	_ = before
	list := h.do("GET", "/api/users/u1/phones", desk, nil)
	phones, _ := list.body["phones"].([]any)
	if list.status != 200 || len(phones) != 2 || phones[0].(map[string]any)["userAgent"] != "Phone One" {
		t.Fatalf("list: %d %s", list.status, list.raw)
	}
	phoneOne := one.body["phoneToken"].(string)
	for _, r := range []response{
		h.do("GET", "/api/users/u1/phones", phoneOne, nil),
		h.do("DELETE", "/api/users/u1/phones/"+two.body["phoneId"].(string), phoneOne, nil),
	} {
		if r.status != 403 || r.body["code"] != "forbidden" {
			t.Fatalf("phone managing phones: %d %s", r.status, r.raw)
		}
	}
	if r := h.do("DELETE", "/api/users/u1/phones/nope", desk, nil); r.status != 404 || r.body["code"] != "phone_not_found" {
		t.Fatalf("unknown phone: %d %s", r.status, r.raw)
	}
	rm := h.do("DELETE", "/api/users/u1/phones/"+one.body["phoneId"].(string), desk, nil)
	if rm.status != 200 || len(rm.body["phones"].([]any)) != 1 {
		t.Fatalf("remove: %d %s", rm.status, rm.raw)
	}
	if r := h.do("POST", "/api/users/u1/presigned-url", phoneOne, map[string]any{"contentType": "image/jpeg", "contentLength": 100}); r.status != 410 || r.body["code"] != "phone_removed" {
		t.Fatalf("removed phone presigns: %d %s", r.status, r.raw)
	}
	if r := h.do("GET", "/api/users/u1/session", two.body["phoneToken"].(string), nil); r.status != 200 {
		t.Fatalf("the other phone lost access: %d %s", r.status, r.raw)
	}
}

// QR redemption is rate limited per client address, and X-Forwarded-For
// from an untrusted peer does not make a new address.
func TestQRRedemptionIsRateLimited(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.QRRedeemLimit = 3 })
	for i := range 3 {
		r := h.do("GET", "/api/session-tokens/"+strings.Repeat("a", 32), "", nil, "X-Forwarded-For", fmt.Sprintf("10.0.0.%d", i))
		if r.status != 404 {
			t.Fatalf("attempt %d: %d %s", i, r.status, r.raw)
		}
	}
	r := h.do("GET", "/api/session-tokens/"+strings.Repeat("b", 32), "", nil, "X-Forwarded-For", "10.9.9.9")
	if r.status != 429 || r.body["code"] != "rate_limited" || r.body["valid"] != false {
		t.Fatalf("4th attempt: %d %s", r.status, r.raw)
	}
}

func TestConfigFromEnvReportsEveryProblem(t *testing.T) {
	env := map[string]string{"UPLOAD_URL_EXPIRY": "forever", "MAX_IMAGES": "many", "LOG_LEVEL": "chatty"}
	_, err := ConfigFromEnv(func(k string) string { return env[k] })
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"UPLOAD_URL_EXPIRY", "MAX_IMAGES", "LOG_LEVEL", "AUTH_JWKS_URL", "AUTH_ISSUER", "REALTIME_SIGNING_KEY"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
	var _ = config.New
}

// A JWKS that cannot be fetched is the identity provider's outage, 503,
// not the GP's bad token.
func TestJWKSOutageIs503(t *testing.T) {
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusBadGateway)
	}))
	defer down.Close()
	h := newHarness(t, func(c *Config) { c.JWKSURL, c.Issuer, c.Audience = down.URL, "https://idp.test", "clinimg" })
	r := h.do("POST", "/api/session-tokens", h.desktop("u1"), map[string]any{"patientId": "p1", "encounterId": "e1"})
	if r.status != 503 || r.body["code"] != "auth_unavailable" {
		t.Fatalf("JWKS down: %d %s", r.status, r.raw)
	}
	if s := h.snapshot("u1"); !strings.HasPrefix(s, "no session") {
		t.Fatalf("a refused start made a session: %s", s)
	}
}

// The pages' CSP names exactly the bucket's and the realtime endpoint's
// origins (no scheme wildcards) and who may frame them; every answer says
// nosniff; /metrics and /readyz are not on the public port.
func TestEdgeHeaders(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.FrameAncestors = "https://evolution.example" })
	u, err := h.objects.PresignGet(context.Background(), "temp/x.jpg", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	s3 := origin(u)
	for _, path := range []string{"/", "/mobile"} {
		r := h.doRaw("GET", path)
		csp := r.Header.Get("Content-Security-Policy")
		for _, want := range []string{"img-src 'self' data: blob: " + s3 + ";", "connect-src 'self' " + s3 + " http://relay.test;",
			"frame-ancestors https://evolution.example", "script-src 'self';"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", path, csp, want)
			}
		}
		for _, wild := range []string{" http: ", " https: ", " http:;", " https:;", "*"} {
			if strings.Contains(csp, wild) {
				t.Errorf("%s: CSP %q allows any origin (%q)", path, csp, wild)
			}
		}
	}
	if r := h.doRaw("GET", "/api/body-sites"); r.Header.Get("X-Content-Type-Options") != "nosniff" || r.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("API answer headers: %v", r.Header)
	}
	for _, path := range []string{"/metrics", "/readyz"} {
		if r := h.doRaw("GET", path); r.StatusCode != 404 {
			t.Errorf("%s on the public port: %d", path, r.StatusCode)
		}
	}
	if r := h.doRaw("GET", "/healthz"); r.StatusCode != 200 {
		t.Errorf("/healthz on the public port: %d", r.StatusCode)
	}
	env := map[string]string{"AUTH_JWKS_URL": "https://idp.test/jwks", "AUTH_ISSUER": "https://idp.test", "AUTH_AUDIENCE": "clinimg",
		"REALTIME_SIGNING_KEY": "k:s", "FRAME_ANCESTORS": "https://ok.example javascript:alert(1)", "HTTP_WRITE_TIMEOUT": "10s"}
	_, err = ConfigFromEnv(func(k string) string { return env[k] })
	if err == nil || !strings.Contains(err.Error(), "FRAME_ANCESTORS") || !strings.Contains(err.Error(), "HTTP_WRITE_TIMEOUT") {
		t.Errorf("bad FRAME_ANCESTORS and a write timeout under COMMIT_WAIT: %v", err)
	}
}

// doRaw is a GET whose headers the test reads.
func (h *harness) doRaw(method, path string) *http.Response {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.srv.URL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// Must show 1 (API): while CONSENT_REQUIRED is on a commit without a
// consent record is refused with 409 consent_required and nothing starts;
// recorded from the phone, the commit goes ahead, and consent is then fixed
// until the commit ends. With the rule off a commit needs none.
func TestCommitNeedsConsent(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CommitWait = 100 * time.Millisecond })
	phone := h.start("u1", "p1")
	h.record("u1", phone)
	desk := h.desktop("u1")
	r := h.do("POST", "/api/users/u1/commit", desk, nil, "Prefer", "respond-async")
	if r.status != 409 || r.body["code"] != "consent_required" {
		t.Fatalf("commit without consent: %d %s", r.status, r.raw)
	}
	if s := h.do("GET", "/api/users/u1/commit", desk, nil); s.body["commitStatus"] != "none" {
		t.Fatalf("a refused commit started: %s", s.raw)
	}
	c := h.do("PUT", "/api/users/u1/consent", phone, map[string]any{"method": "not_obtainable", "reason": "best_interests", "purposes": []string{"referral"}})
	consent, _ := c.body["consent"].(map[string]any)
	if c.status != 200 || consent["via"] != "phone" || !strings.HasPrefix(consent["recordedBy"].(string), "phone ") {
		t.Fatalf("consent from the phone: %d %s", c.status, c.raw)
	}
	if r := h.do("POST", "/api/users/u1/commit", desk, nil, "Prefer", "respond-async"); r.status != 202 {
		t.Fatalf("commit with consent: %d %s", r.status, r.raw)
	}
	if r := h.do("PUT", "/api/users/u1/consent", desk, map[string]any{"method": "verbal"}); r.status != 409 || r.body["code"] != "commit_in_progress" {
		t.Fatalf("consent changed during the commit: %d %s", r.status, r.raw)
	}

	off := newHarness(t, func(c *Config) { c.ConsentRequired = false })
	p2 := off.start("u2", "p1")
	off.record("u2", p2)
	if r := off.do("POST", "/api/users/u2/commit", off.desktop("u2"), nil, "Prefer", "respond-async"); r.status != 202 {
		t.Fatalf("commit with CONSENT_REQUIRED off: %d %s", r.status, r.raw)
	}
	if v := off.do("GET", "/api/vocabulary", "", nil); v.body["consent"].(map[string]any)["required"] != false {
		t.Fatalf("vocabulary: %s", v.raw)
	}
	cfg, err := ConfigFromEnv(func(k string) string {
		return map[string]string{"AUTH_JWKS_URL": "https://idp.test/jwks", "AUTH_ISSUER": "https://idp.test", "AUTH_AUDIENCE": "clinimg", "REALTIME_SIGNING_KEY": "k1:" + strings.Repeat("s", 43)}[k]
	})
	if err != nil || !cfg.ConsentRequired {
		t.Fatalf("CONSENT_REQUIRED defaults to on: %v %v", cfg.ConsentRequired, err)
	}
}

// A photo the GP deleted never comes back: the phone whose answer to its
// record was lost retries the same id and gets 410 image_deleted, whether
// the delete removed its object (the retry finds none) or S3 failed then
// (the object is deleted now). Another object under the deleted id is
// refused and left alone.
func TestRecordAfterDeleteIsGone(t *testing.T) {
	h := newHarness(t)
	phone := h.start("u1", "p1")
	desk := h.desktop("u1")
	ctx := context.Background()
	key, id := h.upload("u1", phone, jpegBytes)
	rec := func() response {
		return h.do("POST", "/api/users/u1/images", phone, map[string]any{"imageId": id, "s3Key": key, "source": "mobile"})
	}
	if r := rec(); r.status != 200 {
		t.Fatalf("record: %d %s", r.status, r.raw)
	}
	otherKey, _ := h.upload("u1", phone, jpegBytes) // another photo's object, not recorded
	if r := h.do("DELETE", "/api/users/u1/images/"+id, desk, nil); r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.raw)
	}
	for _, tc := range []struct {
		name     string
		s3Key    string
		survived bool // the delete's S3 call failed: the object is still there
		status   int
		code     string
	}{
		{"object deleted", key, false, 410, "image_deleted"},
		{"object survived the delete", key, true, 410, "image_deleted"},
		{"another object under the deleted id", otherKey, false, 409, "image_id_conflict"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.survived {
				if err := h.objects.Put(ctx, key, "image/jpeg", bytes.NewReader(jpegBytes), int64(len(jpegBytes))); err != nil {
					t.Fatal(err)
				}
			}
			r := h.do("POST", "/api/users/u1/images", phone, map[string]any{"imageId": id, "s3Key": tc.s3Key, "source": "mobile"})
			if r.status != tc.status || r.body["code"] != tc.code {
				t.Fatalf("record after delete: %d %s, want %d %s", r.status, r.raw, tc.status, tc.code)
			}
			if _, err := h.objects.Head(ctx, key); err != blob.ErrNotFound {
				t.Fatalf("the deleted photo's object is there after the late record: %v", err)
			}
			if _, err := h.objects.Head(ctx, otherKey); err != nil {
				t.Fatalf("another photo's object was touched: %v", err)
			}
			s, err := h.store.Peek(ctx, "u1")
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := s.Image(id); ok || len(s.Images) != 0 {
				t.Fatalf("session holds %d photos after the late record, want none", len(s.Images))
			}
		})
	}
}
