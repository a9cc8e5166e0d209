package session_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// A commit needs a consent record when RequireConsent is set; consent can
// change until the commit and not while it runs; every change is one
// session.consent event.
func TestConsentGatesTheCommit(t *testing.T) {
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			rdb, prefix := open(t)
			ctx := context.Background()
			st := session.NewStore(rdb, session.Options{Prefix: prefix, RequireConsent: true})
			s := start(t, st, "u1", "p1")
			if _, _, err := st.AddImage(ctx, "u1", "", image("a")); err != nil {
				t.Fatal(err)
			}
			if _, err := st.BeginCommit(ctx, "u1", "", "c0"); !errors.Is(err, session.ErrConsentRequired) {
				t.Fatalf("commit without consent: %v", err)
			}
			got, err := st.SetConsent(ctx, "u1", s.Session.SessionID, session.Consent{Method: "verbal", Purposes: session.List[string]{"teaching"}, RecordedBy: "u1", Via: "desktop"})
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(session.List[string]{"record", "teaching"}, got.Consent.Purposes); d != "" || got.Consent.RecordedAt.IsZero() {
				t.Fatalf("consent as stored (-want +got):\n%s %+v", d, got.Consent)
			}
			if _, err := st.SetConsent(ctx, "u1", "another-session", session.Consent{Method: "verbal"}); !errors.Is(err, session.ErrSessionChanged) {
				t.Fatalf("consent for another session: %v", err)
			}
			changed, err := st.SetConsent(ctx, "u1", "", session.Consent{Method: "not_obtainable", Reason: "best_interests", RecordedBy: "ph1", Via: "phone"})
			if err != nil || changed.Consent.Method != "not_obtainable" || changed.Version != got.Version+1 {
				t.Fatalf("changed consent: %+v %v", changed.Consent, err)
			}
			if _, err := st.BeginCommit(ctx, "u1", "", "c1"); err != nil {
				t.Fatalf("commit with consent: %v", err)
			}
			if _, err := st.SetConsent(ctx, "u1", "", session.Consent{Method: "written"}); !errors.Is(err, session.ErrCommitInProgress) {
				t.Fatalf("consent changed during the commit: %v", err)
			}
			if n := consentEvents(t, rdb, st); n != 2 {
				t.Fatalf("%d session.consent events, want 2", n)
			}
		})
	}
}

func consentEvents(t *testing.T, rdb redis.Cmdable, st *session.Store) int {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), st.Keys.Outbox(), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range msgs {
		if s, _ := m.Values["subject"].(string); strings.Contains(s, ".session.consent.") {
			n++
		}
	}
	return n
}

func TestConsentNormalizeAndNote(t *testing.T) {
	for _, tc := range []struct {
		in      session.Consent
		err     bool
		purpose []string
	}{
		{in: session.Consent{Method: "verbal"}, purpose: []string{"record"}},
		{in: session.Consent{Method: "written", Purposes: session.List[string]{"teaching", "referral", "record"}}, purpose: []string{"record", "referral", "teaching"}},
		{in: session.Consent{Method: "not_obtainable", Reason: "emergency"}, purpose: []string{"record"}},
		{in: session.Consent{Method: "not_obtainable"}, err: true},
		{in: session.Consent{Method: "verbal", Reason: "emergency"}, err: true},
		{in: session.Consent{Method: "nodded"}, err: true},
		{in: session.Consent{Method: "verbal", Purposes: session.List[string]{"marketing"}}, err: true},
	} {
		got, err := tc.in.Normalize()
		if (err != nil) != tc.err {
			t.Fatalf("%+v: err %v", tc.in, err)
		}
		if err == nil {
			if d := cmp.Diff(tc.purpose, []string(got.Purposes)); d != "" {
				t.Fatalf("%+v purposes (-want +got):\n%s", tc.in, d)
			}
		}
	}
	c, _ := session.Consent{Method: "not_obtainable", Reason: "best_interests", Purposes: session.List[string]{"referral"}, Via: "desktop", RecordedBy: "user_abc"}.Normalize()
	if got, want := c.ConsentNote(), "Consent to clinical photography: consent not obtainable (in the patient's best interests (unable to consent)). Use: clinical record, referral."; got != want {
		t.Fatalf("note:\n got %q\nwant %q", got, want)
	}
}
