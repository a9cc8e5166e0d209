package alexsim_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/pkg/fhir"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func start(t *testing.T, opt alexsim.Options) (*alexsim.Server, string) {
	t.Helper()
	s := alexsim.New(opt)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts.URL
}

func token(t *testing.T, base string, form url.Values) (int, map[string]any) {
	t.Helper()
	resp, err := http.PostForm(base+alexsim.TokenPath, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func goodForm() url.Values {
	return url.Values{"client_id": {alexsim.DefaultClientID}, "client_secret": {alexsim.DefaultClientSecret},
		"grant_type": {"client_credentials"}, "scope": {alexsim.DefaultScope}}
}

func TestToken(t *testing.T) {
	_, base := start(t, alexsim.Options{})
	tests := []struct {
		name   string
		change func(url.Values)
		status int
		errStr string
	}{
		{"good", func(url.Values) {}, 200, ""},
		{"wrong secret", func(f url.Values) { f.Set("client_secret", "nope") }, 401, "invalid_client"},
		{"unknown client", func(f url.Values) { f.Set("client_id", "other") }, 401, "invalid_client"},
		{"wrong grant", func(f url.Values) { f.Set("grant_type", "password") }, 400, "unsupported_grant_type"},
		{"wrong scope", func(f url.Values) { f.Set("scope", "api://other/.default") }, 400, "invalid_scope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := goodForm()
			tt.change(f)
			status, body := token(t, base, f)
			got := struct {
				Status int
				Err    string
				HasTok bool
			}{status, str(body["error"]), str(body["access_token"]) != ""}
			want := struct {
				Status int
				Err    string
				HasTok bool
			}{tt.status, tt.errStr, tt.status == 200}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func str(v any) string { s, _ := v.(string); return s }

// media is a valid Media body for image id.
func media(id string, data []byte) map[string]any {
	sum := sha1.Sum(data)
	m := map[string]any{
		"resourceType": "Media", "status": "completed",
		"subject": map[string]any{"reference": "Patient/p1"},
		"content": map[string]any{"contentType": "image/jpeg", "data": base64.StdEncoding.EncodeToString(data),
			"size": len(data), "hash": base64.StdEncoding.EncodeToString(sum[:])},
	}
	if id != "" {
		m["identifier"] = []any{map[string]any{"system": fhir.DefaultImageIDNS, "value": id}}
	}
	return m
}

type answer struct {
	Status   int
	Code     string // OperationOutcome issue code, or "plain:<message>"
	Location bool
}

func do(t *testing.T, method, u, tok string, hdr map[string]string, body any) (answer, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, ok := body.([]byte)
		if !ok {
			raw, _ = json.Marshal(body)
		}
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, u, rd)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{}, nil, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{Status: resp.StatusCode, Location: regexp.MustCompile(`/FHIR/Media/[0-9a-f]+/_history/1$`).MatchString(resp.Header.Get("Location"))}
	var oo fhir.OperationOutcome
	var plain struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &oo) == nil && oo.ResourceType == "OperationOutcome" && len(oo.Issue) > 0 {
		a.Code = oo.Issue[0].Code
	} else if json.Unmarshal(raw, &plain) == nil && plain.Message != "" {
		a.Code = "plain:" + plain.Message
	}
	return a, raw, resp.Header
}

func TestCreateMedia(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)}
	sim, base := start(t, alexsim.Options{Now: clk.now, TokenTTL: time.Hour})
	_, body := token(t, base, goodForm())
	tok := str(body["access_token"])
	fhirJSON := map[string]string{"Content-Type": "application/fhir+json", "mt-facilityid": alexsim.DefaultFacility}
	photo := []byte("\xff\xd8 a photo \xff\xd9")
	with := func(f func(map[string]any)) map[string]any { m := media("img-1", photo); f(m); return m }
	tests := []struct {
		name string
		tok  string
		hdr  map[string]string
		body any
		want answer
	}{
		{"valid", tok, fhirJSON, media("img-1", photo), answer{201, "", true}},
		{"no token", "", fhirJSON, media("img-1", photo), answer{401, "plain:Unauthorized. Access token is missing or invalid.", false}},
		{"unknown token", "nope", fhirJSON, media("img-1", photo), answer{401, "plain:Unauthorized. Access token is missing or invalid.", false}},
		{"no facility", tok, map[string]string{"Content-Type": "application/fhir+json"}, media("img-1", photo), answer{403, "plain:Practice Facility not found", false}},
		{"wrong facility", tok, map[string]string{"Content-Type": "application/fhir+json", "mt-facilityid": "X"}, media("img-1", photo), answer{403, "plain:Practice Facility not found", false}},
		{"plain JSON content type", tok, map[string]string{"Content-Type": "application/json", "mt-facilityid": alexsim.DefaultFacility}, media("img-1", photo), answer{415, "not-supported", false}},
		{"no identifier", tok, fhirJSON, media("", photo), answer{400, "business-rule", false}},
		{"STU3 context", tok, fhirJSON, with(func(m map[string]any) { m["context"] = map[string]any{"reference": "Encounter/1"} }), answer{400, "structure", false}},
		{"no status", tok, fhirJSON, with(func(m map[string]any) { delete(m, "status") }), answer{400, "required", false}},
		{"bad status", tok, fhirJSON, with(func(m map[string]any) { m["status"] = "done" }), answer{400, "code-invalid", false}},
		{"no content", tok, fhirJSON, with(func(m map[string]any) { delete(m, "content") }), answer{400, "required", false}},
		{"data without contentType", tok, fhirJSON, with(func(m map[string]any) { delete(m["content"].(map[string]any), "contentType") }), answer{400, "invariant", false}},
		{"bad base64", tok, fhirJSON, with(func(m map[string]any) { m["content"].(map[string]any)["data"] = "!!" }), answer{400, "value", false}},
		{"wrong hash", tok, fhirJSON, with(func(m map[string]any) { m["content"].(map[string]any)["hash"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=" }), answer{400, "value", false}},
		{"wrong size", tok, fhirJSON, with(func(m map[string]any) { m["content"].(map[string]any)["size"] = 3 }), answer{400, "value", false}},
		{"subject not a patient", tok, fhirJSON, with(func(m map[string]any) { m["subject"] = map[string]any{"reference": "Group/1"} }), answer{400, "invalid", false}},
		{"not JSON", tok, fhirJSON, []byte("{"), answer{400, "structure", false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, _ := do(t, "POST", base+"/FHIR/Media", tt.tok, tt.hdr, tt.body)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if n := len(sim.ByIdentifier(fhir.DefaultImageIDNS, "img-1")); n != 1 {
		t.Errorf("%d Media stored, want only the valid one", n)
	}
	// Tokens expire.
	clk.add(time.Hour + time.Second)
	if got, _, _ := do(t, "POST", base+"/FHIR/Media", tok, fhirJSON, media("img-2", photo)); got.Status != 401 {
		t.Errorf("expired token: %d, want 401", got.Status)
	}
}

func TestSearchAndCapabilities(t *testing.T) {
	sim, base := start(t, alexsim.Options{Patients: map[string]string{"p1": "ZZZ0016"}})
	_, body := token(t, base, goodForm())
	tok := str(body["access_token"])
	h := map[string]string{"Content-Type": "application/fhir+json", "mt-facilityid": alexsim.DefaultFacility}
	photo := []byte("photo")
	if a, _, _ := do(t, "POST", base+"/FHIR/Media", tok, h, media("img-1", photo)); a.Status != 201 {
		t.Fatalf("create: %+v", a)
	}
	search := func(q string) (answer, []string) {
		a, raw, _ := do(t, "GET", base+"/FHIR/Media?"+q, tok, h, nil)
		var b struct {
			Entry []struct {
				Resource struct {
					ResourceType string `json:"resourceType"`
					ID           string `json:"id"`
				} `json:"resource"`
			} `json:"entry"`
		}
		_ = json.Unmarshal(raw, &b)
		var types []string
		for _, e := range b.Entry {
			types = append(types, e.Resource.ResourceType)
		}
		return a, types
	}
	nhi := url.Values{"patient.identifier": {fhir.NHISystem + "|ZZZ0016"}}.Encode()
	ident := url.Values{"identifier": {fhir.DefaultImageIDNS + "|img-1"}}.Encode()
	tests := []struct {
		name      string
		caps      fhir.Capabilities
		q         string
		wantCode  int
		wantTypes []string
	}{
		{"by NHI", fhir.Capabilities{}, nhi, 200, []string{"Media"}},
		{"by another NHI: OperationOutcome entry", fhir.Capabilities{}, url.Values{"patient.identifier": {fhir.NHISystem + "|ABC1234"}}.Encode(), 200, []string{"OperationOutcome"}},
		{"by subject", fhir.Capabilities{}, "subject=Patient/p1", 403, nil},
		{"by patient", fhir.Capabilities{}, "patient=p1", 403, nil},
		{"by identifier, not offered", fhir.Capabilities{}, ident, 403, nil},
		{"by identifier, offered", fhir.Capabilities{Search: true}, ident, 200, []string{"Media"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim.SetCapabilities(tt.caps)
			a, types := search(tt.q)
			if diff := cmp.Diff([]any{tt.wantCode, tt.wantTypes}, []any{a.Status, types}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}

	// Unknown patients: 404 (plain JSON), unless AutoPatients.
	if a, _, _ := do(t, "GET", base+"/FHIR/Patient/p2", tok, h, nil); a.Status != 404 || a.Code != "plain:Resource not found" {
		t.Errorf("unknown patient: %+v", a)
	}
	if a, raw, _ := do(t, "GET", base+"/FHIR/Patient/p1", tok, h, nil); a.Status != 200 || !strings.Contains(string(raw), "ZZZ0016") {
		t.Errorf("patient p1: %+v %s", a, raw)
	}

	// Conditional create finds the existing Media instead of writing again.
	sim.SetCapabilities(fhir.Capabilities{ConditionalCreate: true, Delete: true, EnteredInError: true, Transaction: true})
	ch := map[string]string{"Content-Type": "application/fhir+json", "mt-facilityid": alexsim.DefaultFacility,
		"If-None-Exist": "identifier=" + fhir.DefaultImageIDNS + "|img-1"}
	if a, _, _ := do(t, "POST", base+"/FHIR/Media", tok, ch, media("img-1", photo)); a.Status != 200 || !a.Location {
		t.Errorf("conditional create of an existing Media: %+v, want 200 with Location", a)
	}
	if n := len(sim.ByIdentifier(fhir.DefaultImageIDNS, "img-1")); n != 1 {
		t.Errorf("%d Media after conditional create, want 1", n)
	}
	id := sim.Media()[0].ID
	ph := map[string]string{"Content-Type": "application/json-patch+json", "mt-facilityid": alexsim.DefaultFacility}
	if a, _, _ := do(t, "PATCH", base+"/FHIR/Media/"+id, tok, ph, []byte(`[{"op":"replace","path":"/status","value":"entered-in-error"}]`)); a.Status != 200 {
		t.Errorf("mark entered-in-error: %+v", a)
	}
	if sim.Live() != 0 {
		t.Errorf("%d live after entered-in-error", sim.Live())
	}
	if a, _, _ := do(t, "DELETE", base+"/FHIR/Media/"+id, tok, h, nil); a.Status != 204 {
		t.Errorf("delete: %+v", a)
	}
	if a, _, _ := do(t, "GET", base+"/FHIR/Media/"+id, tok, h, nil); a.Status != 410 {
		t.Errorf("read deleted: %+v", a)
	}
	// A transaction stores all or nothing.
	bundle := func(entries ...map[string]any) map[string]any {
		var es []any
		for _, e := range entries {
			es = append(es, map[string]any{"resource": e, "request": map[string]any{"method": "POST", "url": "Media"}})
		}
		return map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": es}
	}
	before := len(sim.Media())
	if a, _, _ := do(t, "POST", base+"/FHIR", tok, h, bundle(media("t-1", photo), media("", photo))); a.Status != 400 || len(sim.Media()) != before {
		t.Errorf("transaction with an invalid entry: %+v, %d Media stored", a, len(sim.Media())-before)
	}
	if a, _, _ := do(t, "POST", base+"/FHIR", tok, h, bundle(media("t-1", photo), media("t-2", photo))); a.Status != 200 || len(sim.Media()) != before+2 {
		t.Errorf("valid transaction: %+v, %d Media stored", a, len(sim.Media())-before)
	}
	// Without the capabilities: not supported.
	sim.SetCapabilities(fhir.Capabilities{})
	for _, m := range []string{"DELETE", "PATCH"} {
		if a, _, _ := do(t, m, base+"/FHIR/Media/"+id, tok, ph, []byte(`[]`)); a.Status != 405 || a.Code != "not-supported" {
			t.Errorf("%s without the capability: %+v", m, a)
		}
	}
}

func TestFaultsAndClient(t *testing.T) {
	sim, base := start(t, alexsim.Options{})
	env := sim.Env(base)
	c, err := fhir.NewClient(fhir.Config{BaseURL: env["ALEX_API_URL"], TokenURL: env["ALEX_OAUTH_TOKEN_URL"],
		ClientID: env["ALEX_CLIENT_ID"], ClientSecret: env["ALEX_CLIENT_SECRET"], Scope: env["ALEX_SCOPE"],
		FacilityID: env["ALEX_FACILITY_ID"], AppID: "test", Timeout: 3 * time.Second}) // the timeout faults hold until the client gives up; a busy machine must not time out the others
	if err != nil {
		t.Fatal(err)
	}
	photo := bytes.Repeat([]byte("0123456789"), 10000)
	src := func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(photo)), int64(len(photo)), nil
	}
	create := func(id string) error {
		_, err := c.CreateMedia(context.Background(), fhir.NewMedia(fhir.Photo{ImageID: id, PatientID: "p1", ContentType: "image/jpeg"}), src, "")
		return err
	}
	type result struct {
		Status    int
		Transient bool
		Retry     time.Duration
		Stored    int
	}
	tests := []struct {
		name  string
		fault alexsim.Fault
		want  result
	}{
		{"500", alexsim.Fault{Status: 500}, result{500, true, 0, 0}},
		{"503 Retry-After", alexsim.Fault{Status: 503, RetryAfter: 2 * time.Second}, result{503, true, 2 * time.Second, 0}},
		{"429 Retry-After", alexsim.Fault{Status: 429, RetryAfter: time.Second}, result{429, true, time.Second, 0}},
		{"422 OperationOutcome", alexsim.Fault{Status: 422, Code: "business-rule"}, result{422, false, 0, 0}},
		{"400 plain", alexsim.Fault{Status: 400, Code: "plain"}, result{400, false, 0, 0}},
		{"reset", alexsim.Fault{Kind: alexsim.FaultReset}, result{0, true, 0, 0}},
		{"timeout", alexsim.Fault{Kind: alexsim.FaultTimeout}, result{0, true, 0, 0}},
		{"500 after the write", alexsim.Fault{Status: 500, AfterStore: true}, result{500, true, 0, 1}},
		{"reset after the write", alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}, result{0, true, 0, 1}},
		{"timeout after the write", alexsim.Fault{Kind: alexsim.FaultTimeout, AfterStore: true}, result{0, true, 0, 1}},
		{"empty 200", alexsim.Fault{Kind: alexsim.FaultEmpty}, result{200, false, 0, 0}},
		{"empty 200 after the write", alexsim.Fault{Kind: alexsim.FaultEmpty, AfterStore: true}, result{200, false, 0, 1}},
		{"expired token: one retry with a new one", alexsim.Fault{Kind: alexsim.FaultExpireToken}, result{0, false, 0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "img-" + strings.ReplaceAll(tt.name, " ", "-")
			sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: id, Fault: tt.fault})
			err := create(id)
			var got result
			var fe *fhir.Error
			if errors.As(err, &fe) {
				got = result{fe.Status, fe.Transient(), fe.RetryAfter, 0}
			} else if err != nil {
				t.Fatalf("not an *fhir.Error: %v", err)
			}
			got.Stored = len(sim.ByIdentifier(fhir.DefaultImageIDNS, id))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	// A Fault hook decides instead of the rules, for every FHIR request.
	var (
		mu   sync.Mutex // the hook runs on the simulator's handlers
		seen []string
	)
	sim.SetHooks(alexsim.Hooks{Fault: func(method, path, identifier string) *alexsim.Fault {
		mu.Lock()
		seen = append(seen, method+" "+path+" "+identifier)
		mu.Unlock()
		if identifier == "hooked" {
			return &alexsim.Fault{Kind: alexsim.FaultEmpty, AfterStore: true}
		}
		return nil
	}})
	sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: "free", Fault: alexsim.Fault{Status: 500}})
	if err := create("hooked"); err == nil || len(sim.ByIdentifier(fhir.DefaultImageIDNS, "hooked")) != 1 {
		t.Errorf("hooked empty 200 after store: %v, %d stored", err, len(sim.ByIdentifier(fhir.DefaultImageIDNS, "hooked")))
	}
	if err := create("free"); err != nil {
		t.Errorf("a rule struck while the hook decides: %v", err)
	}
	mu.Lock()
	got := append([]string(nil), seen...)
	mu.Unlock()
	if diff := cmp.Diff([]string{"POST /Media hooked", "POST /Media free"}, got); diff != "" {
		t.Errorf("hook saw (-want +got):\n%s", diff)
	}
	sim.SetHooks(alexsim.Hooks{})
	sim.ClearFaults()

	// Nth and Times pick which matching requests fail.
	sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: "nth", Nth: 2, Times: 2, Fault: alexsim.Fault{Status: 500}})
	var outcomes []bool
	for range 4 {
		outcomes = append(outcomes, create("nth") == nil)
	}
	if diff := cmp.Diff([]bool{true, false, false, true}, outcomes); diff != "" {
		t.Errorf("Nth=2 Times=2 (-want +got):\n%s", diff)
	}
	// What the client sent is what was stored: size and SHA-1 of the bytes.
	for _, m := range sim.ByIdentifier(fhir.DefaultImageIDNS, "nth") {
		sum := sha1.Sum(photo)
		if m.Size != int64(len(photo)) || m.Hash != base64.StdEncoding.EncodeToString(sum[:]) {
			t.Errorf("stored size %d hash %s", m.Size, m.Hash)
		}
	}
}
