package local

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/testenv"
)

// testdata finds ../shared/testdata beside the repository.
func testdata(t testing.TB, name string) []byte {
	t.Helper()
	dir, _ := os.Getwd()
	for d := dir; d != filepath.Dir(d); d = filepath.Dir(d) {
		p := filepath.Join(d, "shared", "testdata", name)
		if b, err := os.ReadFile(p); err == nil {
			return b
		}
	}
	t.Fatalf("shared/testdata/%s not found above %s", name, dir)
	return nil
}

func call(t testing.TB, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// pairPhone starts a capture for patient on user's desktop and pairs a
// phone with it: the desktop's and the phone's tokens.
func pairPhone(t testing.TB, st *Stack, user, patient, encounter string) (desk, phone string) {
	t.Helper()
	desk, err := st.DesktopToken(user)
	if err != nil {
		t.Fatal(err)
	}
	code, start := call(t, "POST", st.URL+"/api/session-tokens", desk, map[string]any{"patientId": patient, "encounterId": encounter})
	if code != 200 {
		t.Fatalf("start: %d %v", code, start)
	}
	_, pair := call(t, "GET", st.URL+"/api/session-tokens/"+start["sessionToken"].(string), "", nil)
	return desk, pair["phoneToken"].(string)
}

// upload takes one photo on the phone as the page does: presign, PUT to
// S3, record it at the body site given.
func upload(t testing.TB, st *Stack, user, phone string, photo []byte, site string) {
	t.Helper()
	_, pre := call(t, "POST", st.URL+"/api/users/"+user+"/presigned-url", phone, map[string]any{"contentType": "image/jpeg", "contentLength": len(photo)})
	req, _ := http.NewRequest("PUT", pre["uploadUrl"].(string), bytes.NewReader(photo))
	req.Header.Set("Content-Type", "image/jpeg")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("PUT: %v %v", err, resp)
	}
	resp.Body.Close()
	code, rec := call(t, "POST", st.URL+"/api/users/"+user+"/images", phone, map[string]any{
		"imageId": pre["imageId"], "s3Key": pre["s3Key"], "source": "mobile",
		"metadata": map[string]any{"bodySite": site, "laterality": "left", "viewType": "anterior"},
	})
	if code != 200 {
		t.Fatalf("record: %d %v", code, rec)
	}
}

// The end-to-end path through the API (issue 3, must show 5): photos
// recorded, POST commit, and the seeds' response shape comes back with the
// Media ids the ALEX simulator holds.
func TestCommitThroughTheAPI(t *testing.T) {
	st := newClinic(t, nil).st
	desk, phone := pairPhone(t, st, "user_abc", "12345", "enc_789")
	photo := testdata(t, "photo-1920.jpg")
	for _, site := range []string{"368208006", "14975008", "85562004"} {
		upload(t, st, "user_abc", phone, photo, site)
	}
	if code, res := call(t, "PUT", st.URL+"/api/users/user_abc/consent", desk, map[string]any{"method": "written", "purposes": []string{"record", "referral"}}); code != 200 {
		t.Fatalf("consent: %d %v", code, res)
	}
	code, res := call(t, "POST", st.URL+"/api/users/user_abc/commit", desk, nil)
	if code != 200 || res["success"] != true || res["imageCount"] != float64(3) {
		t.Fatalf("commit: %d %v", code, res)
	}
	ids, _ := res["mediaResourceIds"].([]any)
	if len(ids) != 3 || res["message"] != "3 images committed successfully" {
		t.Fatalf("commit answer: %v", res)
	}
	if n := st.ALEX.Live(); n != 3 {
		t.Fatalf("ALEX holds %d live Media, want 3", n)
	}
	// The committed session is closed and its temporary objects are deleted.
	testenv.Eventually(t, 10*time.Second, "the session to read committed", func() bool {
		_, s := call(t, "GET", st.URL+"/api/users/user_abc/session", desk, nil)
		return s["commitStatus"] == "committed"
	})
}
