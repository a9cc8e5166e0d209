package alexsim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/pkg/fhir"
)

// Issue 16, part 3 (the ALEX side): a patient with Media from two earlier
// sessions gets them by NHI, newest first, with date, body site and note;
// another patient's stay out; a patient with no Media gets an empty list
// (ALEX's OperationOutcome entry is not taken for a Media); no NHI asks
// nothing.
func TestPatientMediaByNHI(t *testing.T) {
	sim, base := start(t, alexsim.Options{})
	sim.AddPatient("p1", "ZAA0067")
	sim.AddPatient("p2", "ZZZ0016")
	sim.AddPatient("p3", "ZBB1234")
	env := sim.Env(base)
	c, err := fhir.NewClient(fhir.Config{BaseURL: env["ALEX_API_URL"], TokenURL: env["ALEX_OAUTH_TOKEN_URL"],
		ClientID: env["ALEX_CLIENT_ID"], ClientSecret: env["ALEX_CLIENT_SECRET"], Scope: env["ALEX_SCOPE"],
		FacilityID: env["ALEX_FACILITY_ID"], AppID: "test", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	photo := []byte("\xff\xd8\xff\xe0 a photo")
	src := func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(photo)), int64(len(photo)), nil
	}
	day := func(d int) time.Time { return time.Date(2026, 3, d, 9, 30, 0, 0, time.UTC) }
	put := func(id, patient string, taken time.Time, site, note string) string {
		t.Helper()
		m := fhir.NewMedia(fhir.Photo{ImageID: id, PatientID: patient, EncounterID: "e-" + id, CapturedAt: taken,
			ContentType: "image/jpeg", BodySite: site, Laterality: "left", Notes: note})
		out, err := c.CreateMedia(ctx, m, src, "")
		if err != nil {
			t.Fatal(err)
		}
		return out.ID
	}
	// Two earlier sessions of p1: the forearm in March, again in May with
	// the hand; another patient's forearm.
	march := put("m1", "p1", day(2), "14975008", "first visit")
	put("m2", "p1", day(2).Add(time.Minute), "85562004", "")
	may := put("m3", "p1", day(2).AddDate(0, 2, 0), "14975008", "review")
	put("m4", "p2", day(9), "14975008", "someone else")

	got, err := c.PatientMedia(ctx, "ZAA0067")
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		ID, Site, Note string
		Taken          time.Time
	}
	var all, forearm []seen
	for _, e := range got {
		all = append(all, seen{e.ID, e.BodySite, e.Note, e.Taken})
		if e.BodySite == "14975008" {
			forearm = append(forearm, seen{e.ID, e.BodySite, e.Note, e.Taken})
		}
		if e.BodySiteDisplay == "" || !e.HasData && e.ContentType == "" {
			t.Errorf("%s: no body site display (%q) or content", e.ID, e.BodySiteDisplay)
		}
		if e.Laterality != "left" {
			t.Errorf("%s: laterality %q, want left (the qualifier, not taken for the site)", e.ID, e.Laterality)
		}
	}
	if len(all) != 3 {
		t.Fatalf("p1 has %d Media, want 3: %+v", len(all), all)
	}
	want := []seen{{may, "14975008", "review", day(2).AddDate(0, 2, 0)}, {march, "14975008", "first visit", day(2)}}
	if diff := cmp.Diff(want, forearm); diff != "" {
		t.Errorf("forearm, newest first (-want +got):\n%s", diff)
	}
	b, ct, err := c.MediaContent(ctx, may)
	if err != nil || !bytes.Equal(b, photo) || ct != "image/jpeg" {
		t.Errorf("content of %s: %q %s %v", may, b, ct, err)
	}

	for _, nhi := range []string{"ZBB1234", ""} {
		none, err := c.PatientMedia(ctx, nhi)
		if err != nil || len(none) != 0 {
			t.Errorf("NHI %q: %+v %v, want none", nhi, none, err)
		}
	}
}

// The search answers as ALEX does: a searchset Bundle with its self link,
// each Media a "match" entry; an empty one carries total 0 and an
// OperationOutcome entry in "outcome" mode. A seeded Media is found by its
// patient's NHI with its photo, and a patient registered without an NHI
// has no identifier.
func TestSearchBundleLikeALEX(t *testing.T) {
	sim, base := start(t, alexsim.Options{})
	sim.AddPatient("p1", "ZAA0067")
	sim.AddPatient("p2", "ZBB1234")
	sim.AddPatient("nonhi", "")
	photo := []byte("\xff\xd8\xff\xe0 seeded")
	m := fhir.NewMedia(fhir.Photo{ImageID: "s1", PatientID: "p1", CapturedAt: time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC),
		ContentType: "image/jpeg", BodySite: "14975008", BodySiteDisplay: "Forearm structure", ViewType: "close-up", Notes: "seeded"})
	seeded := sim.Seed(m, photo)
	_, body := token(t, base, goodForm())
	tok := str(body["access_token"])
	h := map[string]string{"mt-facilityid": alexsim.DefaultFacility}
	type entry struct{ Type, Mode string }
	search := func(nhi string) (total int, self string, got []entry) {
		t.Helper()
		q := url.Values{"patient.identifier": {fhir.NHISystem + "|" + nhi}}.Encode()
		a, raw, _ := do(t, "GET", base+"/FHIR/Media?"+q, tok, h, nil)
		if a.Status != 200 {
			t.Fatalf("search %s: %+v", nhi, a)
		}
		var b struct {
			ResourceType, Type string
			Total              int
			Link               []fhir.BundleLink
			Entry              []struct {
				Resource struct{ ResourceType string }
				Search   fhir.BundleSearch
			}
		}
		if err := json.Unmarshal(raw, &b); err != nil || b.ResourceType != "Bundle" || b.Type != "searchset" {
			t.Fatalf("search %s: not a searchset Bundle: %s", nhi, raw)
		}
		for _, l := range b.Link {
			if l.Relation == "self" {
				self = l.URL
			}
		}
		for _, e := range b.Entry {
			got = append(got, entry{e.Resource.ResourceType, e.Search.Mode})
		}
		return b.Total, self, got
	}
	total, self, got := search("ZAA0067")
	if diff := cmp.Diff([]entry{{"Media", "match"}}, got); diff != "" || total != 1 || !strings.Contains(self, "/FHIR/Media?patient.identifier=") {
		t.Errorf("p1: total %d, self %q, entries (-want +got):\n%s", total, self, diff)
	}
	total, _, got = search("ZBB1234")
	if diff := cmp.Diff([]entry{{"OperationOutcome", "outcome"}}, got); diff != "" || total != 0 {
		t.Errorf("none: total %d, entries (-want +got):\n%s", total, diff)
	}

	env := sim.Env(base)
	c, err := fhir.NewClient(fhir.Config{BaseURL: env["ALEX_API_URL"], TokenURL: env["ALEX_OAUTH_TOKEN_URL"],
		ClientID: env["ALEX_CLIENT_ID"], ClientSecret: env["ALEX_CLIENT_SECRET"], Scope: env["ALEX_SCOPE"],
		FacilityID: env["ALEX_FACILITY_ID"], Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	earlier, err := c.PatientMedia(ctx, "ZAA0067")
	if err != nil || len(earlier) != 1 || earlier[0].ID != seeded.ID || earlier[0].View != "Close-up" || earlier[0].Note != "seeded" {
		t.Errorf("seeded: %+v %v", earlier, err)
	}
	if b, _, err := c.MediaContent(ctx, seeded.ID); err != nil || !bytes.Equal(b, photo) {
		t.Errorf("seeded content: %q %v", b, err)
	}
	if nhi, err := c.PatientNHI(ctx, "nonhi"); err != nil || nhi != "" {
		t.Errorf("patient without NHI: %q %v", nhi, err)
	}
	if nhi, err := c.PatientNHI(ctx, "p1"); err != nil || nhi != "ZAA0067" {
		t.Errorf("p1's NHI: %q %v", nhi, err)
	}
}
