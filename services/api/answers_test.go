package api

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// urlObjects presigns a GET as a URL naming the key; nothing else is used.
type urlObjects struct{ objects }

func (urlObjects) PresignGet(_ context.Context, key string, _ time.Duration) (string, error) {
	return "https://bucket.test/" + key + "?sig", nil
}

// TestViewEncodesAsTheSession checks that the view's JSON is the session's
// own (its Lists as [] when empty, never null), with the read URLs added
// and the other patient's id left out.
func TestViewEncodesAsTheSession(t *testing.T) {
	at := time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC)
	full := session.Session{
		SessionID: "s1", UserID: "u1", PatientID: "p1", EncounterID: "e1", OpenPatientID: "p2", Held: true,
		Images: session.List[session.Image]{
			{ID: "a", S3Key: "temp/u1/a.jpg", PreviewKey: "derived/u1/a-p.jpg", CapturedAt: at, SentHashes: session.List[string]{"h"}},
			{ID: "b", S3Key: "temp/u1/b.jpg", CapturedAt: at},
		},
		Phones:  session.List[session.Phone]{{ID: "ph1", PairedAt: at}},
		Version: 3, CreatedAt: at, LastActivity: at,
	}
	for _, tc := range []struct {
		name string
		sess session.Session
	}{
		{"empty lists", session.Session{SessionID: "s0", UserID: "u1", CreatedAt: at}},
		{"photos and a phone", full},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{objects: urlObjects{}, cfg: Config{ViewExpiry: time.Minute}}
			want := tc.sess
			want.OpenPatientID = ""
			want.Images = nil
			for _, im := range tc.sess.Images {
				im.S3URL = "https://bucket.test/" + im.S3Key + "?sig"
				if im.PreviewKey != "" {
					im.PreviewURL = "https://bucket.test/" + im.PreviewKey + "?sig"
				}
				want.Images = append(want.Images, im)
			}
			if diff := cmp.Diff(asJSON(t, want), asJSON(t, s.view(context.Background(), tc.sess))); diff != "" {
				t.Errorf("view's JSON differs from the session's (-want +got):\n%s", diff)
			}
		})
	}
}

// asJSON is v encoded and decoded again, for comparing what a client reads.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
