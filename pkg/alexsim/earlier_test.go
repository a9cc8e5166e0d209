package alexsim_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/alexsim"
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
