package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/gin-gonic/gin"
	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/devissuer"
	"github.com/clinicalimages/clinimg/pkg/audit"
)

// loadOpenAPI parses the embedded document with kin-openapi.
func loadOpenAPI(t testing.TB) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openAPIDoc)
	if err != nil {
		t.Fatalf("load openapi.json: %v", err)
	}
	return doc
}

// TestOpenAPIDocumentIsValid validates the document as OpenAPI 3.1 with
// kin-openapi (its 3.1 mode, examples included), then checks every example
// again against its schema with the JSON Schema 2020-12 validator 3.1 uses.
func TestOpenAPIDocumentIsValid(t *testing.T) {
	doc := loadOpenAPI(t)
	if doc.OpenAPI != "3.1.0" || !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	if err := doc.Validate(context.Background(), openapi3.EnableExamplesValidation()); err != nil {
		t.Fatalf("openapi.json does not validate: %v", err)
	}

	// Every JSON answer and request body has an example, and each example
	// is valid for its schema.
	n := 0
	check := func(where string, mt *openapi3.MediaType) {
		if mt == nil || mt.Schema == nil {
			t.Errorf("%s: no schema", where)
			return
		}
		var examples []any
		if mt.Example != nil {
			examples = append(examples, mt.Example)
		}
		for name, ex := range mt.Examples {
			if ex.Value == nil {
				t.Errorf("%s: example %s is empty", where, name)
				continue
			}
			examples = append(examples, ex.Value.Value)
		}
		if len(examples) == 0 {
			t.Errorf("%s: no example", where)
		}
		for _, ex := range examples {
			n++
			if err := mt.Schema.Value.VisitJSON(ex, openapi3.EnableJSONSchema2020()); err != nil {
				t.Errorf("%s: example does not match the schema: %v", where, err)
			}
		}
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			if op.RequestBody != nil {
				check(where+" request", op.RequestBody.Value.Content.Get("application/json"))
			}
			for status, r := range op.Responses.Map() {
				if mt := r.Value.Content.Get("application/json"); mt != nil && op.OperationID != "openapi" {
					check(where+" "+status, mt)
				}
			}
			if op.Responses.Status(200) == nil {
				t.Errorf("%s: no 200 answer documented", where)
			}
		}
	}
	if n < 40 {
		t.Errorf("only %d examples checked", n)
	}

	// The error shape and both credentials are declared, and every user
	// route accepts exactly the two bearer schemes and documents 401/403.
	errSchema := doc.Components.Schemas["Error"].Value
	if diff := cmp.Diff([]string{"error", "code"}, errSchema.Required); diff != "" {
		t.Errorf("Error schema required (-want +got):\n%s", diff)
	}
	for _, name := range []string{"desktopJWT", "phoneToken"} {
		ss := doc.Components.SecuritySchemes[name]
		if ss == nil || ss.Value.Type != "http" || ss.Value.Scheme != "bearer" {
			t.Errorf("security scheme %s: want http bearer", name)
		}
	}
	for path, item := range doc.Paths.Map() {
		if !strings.HasPrefix(path, "/api/users/") {
			continue
		}
		for method, op := range item.Operations() {
			if op.Security == nil || len(*op.Security) != 2 {
				t.Errorf("%s %s: want desktopJWT or phoneToken security", method, path)
			}
			for _, st := range []int{401, 403} {
				if op.Responses.Status(st) == nil {
					t.Errorf("%s %s: %d not documented", method, path, st)
				}
			}
		}
	}
}

// ginPath turns a Gin route (:param, *wildcard) into an OpenAPI path.
var ginParam = regexp.MustCompile(`[:*]([A-Za-z0-9_]+)`)

func ginPath(p string) string { return ginParam.ReplaceAllString(p, "{$1}") }

// TestOpenAPICoversTheRouter compares the routes Gin registers (with the
// development issuer, so the local-only routes are on) with the document's
// operations, both ways, and checks the document served is the file.
func TestOpenAPICoversTheRouter(t *testing.T) {
	issuer, err := devissuer.New("https://idp.test", "clinimg")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(Config{DevIssuer: issuer}, Deps{})
	h := s.Router()
	engine, ok := h.(*gin.Engine)
	if !ok {
		t.Fatalf("Router() is %T, want *gin.Engine", h)
	}
	var served []string
	for _, r := range engine.Routes() {
		served = append(served, r.Method+" "+ginPath(r.Path))
	}
	sort.Strings(served)

	doc := loadOpenAPI(t)
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	sort.Strings(documented)
	if diff := cmp.Diff(served, documented); diff != "" {
		t.Errorf("routes served (-) vs documented (+):\n%s", diff)
	}

	srv := httptest.NewServer(h)
	defer srv.Close()
	res, err := http.Get(srv.URL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" || string(body) != string(openAPIDoc) {
		t.Errorf("GET /openapi.json: %d %s, %d bytes; want the embedded document", res.StatusCode, res.Header.Get("Content-Type"), len(body))
	}
}

// TestOpenAPIMatchesLiveAnswers drives the API on real Redis, S3 and NATS
// through every route and checks each answer's status is documented for
// its route and its body matches the documented schema.
func TestOpenAPIMatchesLiveAnswers(t *testing.T) {
	doc := loadOpenAPI(t)
	h := newHarness(t)
	user, other := "user_oa1", "user_oa2"
	desk := h.desktop(user)

	seen := map[string]bool{}
	expect := func(method, route string, r response, want int) {
		t.Helper()
		key := fmt.Sprintf("%s %s %d", method, route, want)
		seen[key] = true
		if r.status != want {
			t.Fatalf("%s: got %d %s", key, r.status, r.raw)
		}
		item := doc.Paths.Find(route)
		if item == nil || item.GetOperation(method) == nil {
			t.Fatalf("%s: route not documented", key)
		}
		resp := item.GetOperation(method).Responses.Status(r.status)
		if resp == nil {
			t.Errorf("%s: status not documented", key)
			return
		}
		mt := resp.Value.Content.Get("application/json")
		if mt == nil {
			return // not JSON (pages, metrics)
		}
		var body any
		if err := json.Unmarshal(r.raw, &body); err != nil {
			t.Errorf("%s: body is not JSON: %s", key, r.raw)
			return
		}
		if err := mt.Schema.Value.VisitJSON(body, openapi3.EnableJSONSchema2020()); err != nil {
			t.Errorf("%s: answer does not match the documented schema: %v\n%s", key, err, r.raw)
		}
	}
	u := "/api/users/" + user
	U := "/api/users/{userId}"

	expect("GET", "/healthz", h.do("GET", "/healthz", "", nil), 200)
	expect("GET", "/api/body-sites", h.do("GET", "/api/body-sites", "", nil), 200)
	expect("GET", "/api/body-sites", h.do("GET", "/api/body-sites?q=forearm", "", nil), 200)
	expect("GET", "/api/vocabulary", h.do("GET", "/api/vocabulary", "", nil), 200)
	expect("GET", "/dev/token", h.do("GET", "/dev/token?userId="+user, "", nil), 200)
	expect("GET", "/dev/token", h.do("GET", "/dev/token?userId=no%20spaces", "", nil), 400)
	expect("GET", "/dev/jwks.json", h.do("GET", "/dev/jwks.json", "", nil), 200)

	expect("POST", "/api/session-tokens", h.do("POST", "/api/session-tokens", "", map[string]any{"patientId": "p1", "encounterId": "e1"}), 401)
	expect("POST", "/api/session-tokens", h.do("POST", "/api/session-tokens", desk, map[string]any{"patientId": "p 1", "encounterId": "e1"}), 400)
	expect("GET", U+"/session", h.do("GET", u+"/session", desk, nil), 404)
	start := h.do("POST", "/api/session-tokens", desk, map[string]any{"patientId": "p1", "encounterId": "e1"})
	expect("POST", "/api/session-tokens", start, 200)
	token, _ := start.body["sessionToken"].(string)
	expect("GET", "/api/session-tokens/{token}", h.do("GET", "/api/session-tokens/"+strings.Repeat("z", 32), "", nil), 404)
	pair := h.do("GET", "/api/session-tokens/"+token, "", nil)
	expect("GET", "/api/session-tokens/{token}", pair, 200)
	expect("GET", "/api/session-tokens/{token}", h.do("GET", "/api/session-tokens/"+token, "", nil), 410)
	phone, _ := pair.body["phoneToken"].(string)

	expect("POST", U+"/presigned-url", h.do("POST", u+"/presigned-url", phone, map[string]any{"contentType": "image/gif"}), 415)
	expect("POST", U+"/presigned-url", h.do("POST", u+"/presigned-url", phone, map[string]any{"contentType": "image/jpeg", "contentLength": 1 << 30}), 413)
	expect("POST", U+"/presigned-url", h.do("POST", "/api/users/"+other+"/presigned-url", phone, map[string]any{"contentType": "image/jpeg"}), 403)
	ps := h.do("POST", u+"/presigned-url", phone, map[string]any{"fileName": "IMG_1.JPG", "contentType": "image/jpeg", "contentLength": len(jpegBytes)})
	expect("POST", U+"/presigned-url", ps, 200)
	key, id := ps.body["s3Key"].(string), ps.body["imageId"].(string)
	record := map[string]any{"imageId": id, "s3Key": key, "source": "mobile", "metadata": map[string]any{"bodySite": "14975008", "laterality": "left"}}
	expect("POST", U+"/images", h.do("POST", u+"/images", phone, record), 422) // not uploaded yet
	put(t, ps.body["uploadUrl"].(string), "image/jpeg", jpegBytes, http.StatusOK)
	expect("POST", U+"/images", h.do("POST", u+"/images", phone, record), 200)
	expect("POST", U+"/images", h.do("POST", u+"/images", phone, map[string]any{"imageId": id, "s3Key": key, "source": "fax"}), 400)
	second := h.record(user, phone)
	expect("POST", U+"/images", h.do("POST", u+"/images", desk, map[string]any{"imageId": id, "s3Key": key, "source": "desktop", "patientId": "p1"}), 200)
	k2, id2 := h.upload(user, desk, jpegBytes)
	expect("POST", U+"/images", h.do("POST", u+"/images", desk, map[string]any{"imageId": id2, "s3Key": k2, "source": "desktop", "patientId": "p2"}), 409)
	expect("PUT", U+"/open-patient", h.do("PUT", u+"/open-patient", desk, map[string]any{"patientId": "p1"}), 200)
	expect("PUT", U+"/open-patient", h.do("PUT", u+"/open-patient", desk, map[string]any{"patientId": ""}), 400)
	expect("PUT", U+"/open-patient", h.do("PUT", u+"/open-patient", phone, map[string]any{"patientId": "p1"}), 403)
	expect("PUT", U+"/open-patient", h.do("PUT", "/api/users/user_nobody/open-patient", h.desktop("user_nobody"), map[string]any{"patientId": "p1"}), 404)
	expect("PUT", U+"/pending", h.do("PUT", u+"/pending", phone, map[string]any{"count": 2}), 200)
	expect("PUT", U+"/pending", h.do("PUT", u+"/pending", phone, map[string]any{"count": -1}), 400)
	expect("PUT", U+"/pending", h.do("PUT", u+"/pending", desk, map[string]any{"count": 1}), 403)
	expect("PUT", U+"/pending", h.do("PUT", "/api/users/"+other+"/pending", h.desktop(other), map[string]any{"count": 1}), 403)

	expect("PATCH", U+"/images/{imageId}", h.do("PATCH", u+"/images/"+id, desk, map[string]any{"viewType": "close-up", "notes": "lesion"}), 200)
	expect("PATCH", U+"/images/{imageId}", h.do("PATCH", u+"/images/"+id, desk, map[string]any{"metadata": map[string]any{"laterality": "up"}}), 400)
	expect("PATCH", U+"/images/{imageId}", h.do("PATCH", u+"/images/nope", desk, map[string]any{"notes": "x"}), 404)
	expect("DELETE", U+"/images/{imageId}", h.do("DELETE", u+"/images/"+second, phone, nil), 200)
	expect("GET", U+"/session", h.do("GET", u+"/session", phone, nil), 200)
	expect("GET", U+"/session", h.do("GET", u+"/session", h.desktop(other), nil), 403)
	expect("GET", U+"/commit", h.do("GET", u+"/commit", desk, nil), 200)
	expect("GET", U+"/realtime-token", h.do("GET", u+"/realtime-token", desk, nil), 200)
	expect("GET", U+"/phones", h.do("GET", u+"/phones", desk, nil), 200)
	expect("GET", U+"/phones", h.do("GET", u+"/phones", phone, nil), 403)
	// Earlier photos: this harness has no ALEX settings, a clear state.
	expect("GET", U+"/earlier-photos", h.do("GET", u+"/earlier-photos", desk, nil), 200)
	expect("GET", U+"/earlier-photos", h.do("GET", u+"/earlier-photos", phone, nil), 403)
	expect("GET", U+"/earlier-photos", h.do("GET", "/api/users/user_nobody/earlier-photos", h.desktop("user_nobody"), nil), 404)

	expect("DELETE", U+"/phones/{phoneId}", h.do("DELETE", u+"/phones/nope", desk, nil), 404)
	expect("DELETE", U+"/phones/{phoneId}", h.do("DELETE", u+"/phones/"+pair.body["phoneId"].(string), phone, nil), 403)

	expect("POST", U+"/commit", h.do("POST", u+"/commit", desk, nil, "Prefer", "respond-async"), 409) // no consent yet
	expect("PUT", U+"/consent", h.do("PUT", u+"/consent", desk, map[string]any{"method": "nodded"}), 400)
	expect("PUT", U+"/consent", h.do("PUT", u+"/consent", phone, map[string]any{"method": "written", "purposes": []string{"teaching"}}), 200)
	expect("PUT", U+"/consent", h.do("PUT", u+"/consent", desk, map[string]any{"method": "verbal", "purposes": []string{"record", "referral"}}), 200)
	expect("PUT", U+"/consent", h.do("PUT", "/api/users/user_nobody/consent", h.desktop("user_nobody"), map[string]any{"method": "verbal"}), 404)
	expect("PUT", U+"/consent", h.do("PUT", "/api/users/"+other+"/consent", desk, map[string]any{"method": "verbal"}), 403)
	expect("POST", U+"/commit", h.do("POST", u+"/commit", desk, nil, "Prefer", "respond-async"), 202)
	expect("PUT", U+"/consent", h.do("PUT", u+"/consent", desk, map[string]any{"method": "written"}), 409)
	expect("POST", U+"/commit", h.do("POST", u+"/commit", desk, nil, "Prefer", "respond-async"), 409)
	expect("GET", U+"/commit", h.do("GET", u+"/commit", desk, nil), 200)
	expect("DELETE", U+"/images/{imageId}", h.do("DELETE", u+"/images/"+id, desk, nil), 409)
	expect("POST", U+"/commit/stop", h.do("POST", u+"/commit/stop", desk, nil), 200)
	expect("POST", U+"/commit/stop", h.do("POST", u+"/commit/stop", phone, nil), 409)
	expect("POST", U+"/commit", h.do("POST", u+"/commit", desk, map[string]any{"resend": []string{id}}, "Prefer", "respond-async"), 409)

	expect("DELETE", U+"/phones/{phoneId}", h.do("DELETE", u+"/phones/"+pair.body["phoneId"].(string), desk, nil), 200)

	// The audit trail (written by the consumer, here by hand).
	A := U + "/sessions/{sessionId}/audit"
	sid, _ := start.body["sessionId"].(string)
	expect("GET", A, h.do("GET", u+"/sessions/"+sid+"/audit", desk, nil), 404)
	if _, err := audit.NewStore(h.objects).Append(context.Background(), user, sid, []audit.Record{{ID: "e1", EventID: "e1",
		At: time.Now().UTC(), Version: 1, SessionID: sid, Step: audit.Captured, ImageID: id, By: "phone", Source: "mobile", Device: "iPhone, iOS 18.1"}}); err != nil {
		t.Fatal(err)
	}
	expect("GET", A, h.do("GET", u+"/sessions/"+sid+"/audit", desk, nil), 200)
	if r := h.do("GET", u+"/sessions/"+sid+"/audit?format=csv", desk, nil); r.status != 200 || !strings.HasPrefix(string(r.raw), "at,step,image_id") {
		t.Errorf("audit as CSV: %d %s", r.status, r.raw)
	}
	expect("GET", A, h.do("GET", u+"/sessions/"+sid+"/audit?format=pdf", desk, nil), 400)
	expect("GET", A, h.do("GET", u+"/sessions/bad%20id/audit", desk, nil), 400)
	expect("GET", A, h.do("GET", "/api/users/"+other+"/sessions/"+sid+"/audit", desk, nil), 403)
	expect("GET", A, h.do("GET", u+"/sessions/"+sid+"/audit", "", nil), 401)

	// A new session for another patient would drop the uncommitted photo.
	h2 := h.desktop("user_oa3")
	h.start("user_oa3", "p1")
	key3, id3 := h.upload("user_oa3", h2, jpegBytes)
	expect("POST", U+"/images", h.do("POST", "/api/users/user_oa3/images", h2, map[string]any{"imageId": id3, "s3Key": key3, "source": "desktop"}), 200)
	expect("POST", "/api/session-tokens", h.do("POST", "/api/session-tokens", h2, map[string]any{"patientId": "p2", "encounterId": "e2"}), 409)
	expect("POST", U+"/commit", h.do("POST", "/api/users/"+other+"/commit", h.desktop(other), nil), 404)

	// The pages and operations routes answer as documented too.
	for _, p := range []string{"/openapi.json", "/", "/mobile", "/static/desktop.js"} {
		route := p
		if strings.HasPrefix(p, "/static/") {
			route = "/static/{path}"
		}
		expect("GET", route, h.do("GET", p, "", nil), 200)
	}

	// Every documented operation was exercised above.
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			hit := false
			for k := range seen {
				hit = hit || strings.HasPrefix(k, method+" "+path+" ")
			}
			if !hit {
				t.Errorf("%s %s: not exercised against the live API", method, path)
			}
		}
	}
}

// TestAnswersMatchTheSchemas checks each answer type against the schema
// documented for it, field by field: every JSON field the type sends is a
// documented property, and every required property is a field the type
// always sends (no omitempty). The live answers are checked above; this
// names the Go type when the two drift apart.
func TestAnswersMatchTheSchemas(t *testing.T) {
	doc := loadOpenAPI(t)
	U := "/api/users/{userId}"
	for _, tc := range []struct {
		answer        any
		method, route string
		status        int
	}{
		{errorAnswer{}, "POST", U + "/presigned-url", 400},
		{errorAnswer{}, "POST", U + "/commit", 409},
		{healthAnswer{}, "GET", "/healthz", 200},
		{startAnswer{}, "POST", "/api/session-tokens", 200},
		{exchangeAnswer{}, "GET", "/api/session-tokens/{token}", 200},
		{exchangeErrorAnswer{}, "GET", "/api/session-tokens/{token}", 404},
		{exchangeErrorAnswer{}, "GET", "/api/session-tokens/{token}", 429},
		{presignAnswer{}, "POST", U + "/presigned-url", 200},
		{recordAnswer{}, "POST", U + "/images", 200},
		{updateAnswer{}, "PATCH", U + "/images/{imageId}", 200},
		{deleteAnswer{}, "DELETE", U + "/images/{imageId}", 200},
		{openPatientAnswer{}, "PUT", U + "/open-patient", 200},
		{pendingAnswer{}, "PUT", U + "/pending", 200},
		{consentAnswer{}, "PUT", U + "/consent", 200},
		{commitAnswer{}, "POST", U + "/commit", 200},
		{commitAcceptedAnswer{}, "POST", U + "/commit", 202},
		{commitFailedAnswer{}, "POST", U + "/commit", 502},
		{stopCommitAnswer{}, "POST", U + "/commit/stop", 200},
		{commitStatusAnswer{}, "GET", U + "/commit", 200},
		{phonesAnswer{}, "GET", U + "/phones", 200},
		{phoneRemovedAnswer{}, "DELETE", U + "/phones/{phoneId}", 200},
		{auditAnswer{}, "GET", U + "/sessions/{sessionId}/audit", 200},
		{devTokenAnswer{}, "GET", "/dev/token", 200},
		{earlierList{}, "GET", U + "/earlier-photos", 200},
	} {
		typ := reflect.TypeOf(tc.answer)
		where := fmt.Sprintf("%s (%s %s %d)", typ.Name(), tc.method, tc.route, tc.status)
		item := doc.Paths.Find(tc.route)
		if item == nil || item.GetOperation(tc.method) == nil {
			t.Errorf("%s: route not documented", where)
			continue
		}
		resp := item.GetOperation(tc.method).Responses.Status(tc.status)
		if resp == nil || resp.Value.Content.Get("application/json") == nil {
			t.Errorf("%s: no JSON answer documented", where)
			continue
		}
		props, required := objectFields(resp.Value.Content.Get("application/json").Schema.Value)
		sent := map[string]bool{} // field -> always sent
		for i := range typ.NumField() {
			name, opts, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if name == "" || name == "-" {
				t.Errorf("%s: field %s has no JSON name", where, typ.Field(i).Name)
				continue
			}
			sent[name] = !strings.Contains(opts, "omitempty")
			if !props[name] {
				t.Errorf("%s: sends %q, which the schema does not document", where, name)
			}
		}
		for _, name := range required {
			if always, ok := sent[name]; !ok || !always {
				t.Errorf("%s: the schema requires %q, which the type does not always send", where, name)
			}
		}
	}
}

// objectFields are an object schema's properties and required ones, its
// allOf parts' included.
func objectFields(s *openapi3.Schema) (props map[string]bool, required []string) {
	props = map[string]bool{}
	for name := range s.Properties {
		props[name] = true
	}
	required = append(required, s.Required...)
	for _, part := range s.AllOf {
		p, r := objectFields(part.Value)
		for name := range p {
			props[name] = true
		}
		required = append(required, r...)
	}
	return props, required
}
