package committer_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"image/jpeg"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Must show 1: every Media the committer sends is valid R4 according to
// both offline validators, and carries what the session said.
func TestMediaIsValidR4(t *testing.T) {
	t.Parallel()
	dir, err := filepath.Abs("testdata/fhirvalidate")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@medplum", "core")); err != nil {
		t.Fatalf("the FHIR validators are not installed: run `npm ci --prefix services/committer/testdata/fhirvalidate` (%v)", err)
	}
	e := newEnv(t, alexsim.Options{})
	logs := e.startCommitter(nil)
	sp := []photoSpec{
		{meta: session.Metadata{BodySite: "14975008", BodySiteDisplay: "Forearm structure", Laterality: "left", ViewType: "anterior", Notes: "Lesion 4 mm, irregular border"}},
		{meta: session.Metadata{BodySite: "85562004", BodySiteDisplay: "Hand structure", Laterality: "right", ViewType: "close-up"}},
		{meta: session.Metadata{BodySite: "left_arm", Laterality: "bilateral", ViewType: "lateral"}},
		{meta: session.Metadata{}},
		// No clean copy yet, EXIF orientation 6, GPS and every other kind of
		// metadata: cleaned and turned here.
		{noClean: true, original: hygienetest.WithMetadata(testJPEG(40, 20, 3), 6), meta: session.Metadata{BodySite: "40983000", BodySiteDisplay: "Upper arm structure", ViewType: "posterior"}},
	}
	userID, sess := e.seed(sp)
	// Consent as the GP records it (PUT consent): every Media carries it.
	if _, err := e.store.SetConsent(context.Background(), userID, sess.SessionID, session.Consent{
		Method: "written", Purposes: session.List[string]{"referral"}, RecordedBy: "user_gp", Via: "desktop"}); err != nil {
		t.Fatal(err)
	}
	cid := e.commit(userID, sess)
	sess = e.outcome(userID, cid, 30*time.Second)
	e.checkExactlyOnce(t, sess)
	consent := sess.Consent.ConsentNote()
	if !strings.HasPrefix(consent, "Consent to clinical photography: written consent. Use: clinical record, referral. Recorded on the desktop by user_gp") {
		t.Fatalf("consent note %q", consent)
	}

	var bodies []json.RawMessage
	for _, m := range e.sim.Media() {
		bodies = append(bodies, m.Body)
		var got fhir.Media
		if err := json.Unmarshal(m.Body, &got); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(m.Body), `"context"`) {
			t.Errorf("%s: STU3 context sent", m.ID)
		}
		img, ok := imageByIdentifier(sess, got.IdentifierValue(fhir.DefaultImageIDNS))
		if !ok {
			t.Fatalf("%s: identifier %q is no photo's", m.ID, got.IdentifierValue(fhir.DefaultImageIDNS))
		}
		if got.IdentifierValue(fhir.DefaultImageIDNS) == img.ID {
			t.Errorf("%s: the client's image id is the Media identifier", img.ID)
		}
		if got.Subject == nil || got.Subject.Reference != "Patient/"+testPatient || got.Encounter == nil || got.Encounter.Reference != "Encounter/enc-1" {
			t.Errorf("%s: subject %v encounter %v", img.ID, got.Subject, got.Encounter)
		}
		if got.CreatedDateTime != img.CapturedAt.UTC().Format(time.RFC3339) {
			t.Errorf("%s: createdDateTime %q, want %q", img.ID, got.CreatedDateTime, img.CapturedAt)
		}
		want := []fhir.Annotation{{Text: consent}}
		if img.Metadata.Notes != "" {
			want = []fhir.Annotation{{Text: img.Metadata.Notes}, {Text: consent}}
		}
		if d := cmp.Diff(want, got.Note); d != "" {
			t.Errorf("%s: notes (-want +got):\n%s", img.ID, d)
		}
		if c, ok := fhir.LateralityCoding(img.Metadata.Laterality); ok {
			if got.BodySite == nil || !containsCoding(got.BodySite.Coding, c) {
				t.Errorf("%s: laterality %s not coded in %+v", img.ID, img.Metadata.Laterality, got.BodySite)
			}
		}
		data, _ := base64.StdEncoding.DecodeString(got.Content.Data)
		if indexOf(img.ID) == 4 {
			for _, secret := range append(hygienetest.Secrets, "Exif") {
				if bytes.Contains(data, []byte(secret)) {
					t.Errorf("%s: metadata %q left in the committed bytes", img.ID, secret)
				}
			}
			cfg, err := jpeg.DecodeConfig(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([2]int{20, 40}, [2]int{cfg.Width, cfg.Height}); diff != "" {
				t.Errorf("%s: not turned upright (-want +got):\n%s", img.ID, diff)
			}
			if got.Width != 20 || got.Height != 40 {
				t.Errorf("%s: width/height %d/%d, want 20/40", img.ID, got.Width, got.Height)
			}
		}
	}
	// Promise 8: nothing clinical or secret in the logs, but every ALEX
	// request's correlation id.
	all := strings.Join(logs.Lines(), "")
	for _, secret := range []string{testPatient, "Lesion 4 mm", "sim_", e.vars["ALEX_CLIENT_SECRET"], "Bearer"} {
		if strings.Contains(all, secret) {
			t.Errorf("the logs contain %q", secret)
		}
	}
	for _, r := range e.sim.Requests() {
		if r.CorrelationID != "" && !strings.Contains(all, r.CorrelationID) {
			t.Errorf("request %s %s: mt-correlationid %s not logged", r.Method, r.Path, r.CorrelationID)
		}
	}

	f := filepath.Join(t.TempDir(), "media.json")
	raw, _ := json.Marshal(bodies)
	if err := os.WriteFile(f, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("node", filepath.Join(dir, "validate.js"), f).Output()
	if err != nil {
		t.Fatalf("node validate.js: %v", err)
	}
	var results []struct {
		Index   int      `json:"index"`
		Medplum []string `json:"medplum"`
		FHIR    []string `json:"fhir"`
	}
	if err := json.Unmarshal(out, &results); err != nil {
		t.Fatalf("validator output %q: %v", out, err)
	}
	if len(results) != len(sp) {
		t.Fatalf("validated %d resources, want %d", len(results), len(sp))
	}
	for _, r := range results {
		if len(r.Medplum)+len(r.FHIR) > 0 {
			t.Errorf("Media %d is not valid R4:\nmedplum: %v\nfhir: %v", r.Index, r.Medplum, r.FHIR)
		}
	}
}

// The validators themselves catch what the seeds' Media got wrong, so a
// pass above means something.
func TestValidatorsRejectSeedMedia(t *testing.T) {
	t.Parallel()
	dir, _ := filepath.Abs("testdata/fhirvalidate")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "fhir")); err != nil {
		t.Fatalf("the FHIR validators are not installed: run `npm ci --prefix services/committer/testdata/fhirvalidate` (%v)", err)
	}
	seed := `[{"resourceType":"Media","status":"completed","content":{"contentType":"image/jpeg","data":"/9j/"},
	  "subject":{"reference":"Patient/1"},"context":{"reference":"Encounter/2"}},
	 {"resourceType":"Media","status":"done","content":{"contentType":"image/jpeg","data":"/9j/"}}]`
	f := filepath.Join(t.TempDir(), "seed.json")
	if err := os.WriteFile(f, []byte(seed), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("node", filepath.Join(dir, "validate.js"), f).Output()
	if err != nil {
		t.Fatalf("node validate.js: %v", err)
	}
	var results []struct {
		Medplum []string `json:"medplum"`
		FHIR    []string `json:"fhir"`
	}
	if err := json.Unmarshal(out, &results); err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if len(r.Medplum)+len(r.FHIR) == 0 {
			t.Errorf("resource %d passed both validators", i)
		}
	}
}

func imageByIdentifier(sess session.Session, value string) (session.Image, bool) {
	for _, im := range sess.Images {
		if im.MediaIdentifier == value {
			return im, true
		}
	}
	return session.Image{}, false
}

func containsCoding(cs []fhir.Coding, c fhir.Coding) bool {
	for _, x := range cs {
		if x.System == c.System && x.Code == c.Code {
			return true
		}
	}
	return false
}
