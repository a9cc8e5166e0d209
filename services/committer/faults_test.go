package committer_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/alexsim"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Must show 2: each fault, on the first, middle and last photo, ends with
// exactly one Media per photo (transient faults) or none left in the record
// (a permanent fault, compensated).
func TestFaults(t *testing.T) {
	const n = 5
	onPhoto := func(f alexsim.Fault) func(string) []alexsim.Rule {
		return func(id string) []alexsim.Rule {
			return []alexsim.Rule{{Method: "POST", Path: "/Media", Identifier: id, Fault: f}}
		}
	}
	type outcome int
	const (
		committed   outcome = iota // every photo exactly once
		compensated                // failed; nothing left live
		orphansKept                // failed; what was written is listed as orphans
	)
	rows := []struct {
		name  string
		caps  string
		rules func(imageID string) []alexsim.Rule
		want  outcome
	}{
		{"500", "", onPhoto(alexsim.Fault{Status: 500}), committed},
		{"500 twice", "", func(id string) []alexsim.Rule {
			return []alexsim.Rule{{Method: "POST", Path: "/Media", Identifier: id, Times: 2, Fault: alexsim.Fault{Status: 500}}}
		}, committed},
		{"500 after the write", "", onPhoto(alexsim.Fault{Status: 500, AfterStore: true}), committed},
		{"503 Retry-After", "", onPhoto(alexsim.Fault{Status: 503, RetryAfter: time.Second}), committed},
		{"429 Retry-After", "", onPhoto(alexsim.Fault{Status: 429, RetryAfter: time.Second}), committed},
		{"timeout", "", onPhoto(alexsim.Fault{Kind: alexsim.FaultTimeout}), committed},
		{"timeout after the write", "", onPhoto(alexsim.Fault{Kind: alexsim.FaultTimeout, AfterStore: true}), committed},
		{"reset", "", onPhoto(alexsim.Fault{Kind: alexsim.FaultReset}), committed},
		{"reset after the write", "", onPhoto(alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}), committed},
		{"reset after the write, conditional create", "conditional-create", onPhoto(alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}), committed},
		{"reset after the write, identifier search", "search", onPhoto(alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}), committed},
		{"token expiry mid-commit", "", onPhoto(alexsim.Fault{Kind: alexsim.FaultExpireToken}), committed},
		{"422, delete", "delete", onPhoto(alexsim.Fault{Status: 422, Code: "business-rule", Message: "Image rejected"}), compensated},
		{"422, entered-in-error", "entered-in-error", onPhoto(alexsim.Fault{Status: 422, Code: "business-rule", Message: "Image rejected"}), compensated},
		{"400 plain JSON, delete", "delete", onPhoto(alexsim.Fault{Status: 400, Code: "plain", Message: "Bad request"}), compensated},
		{"422, nothing to withdraw with", "", onPhoto(alexsim.Fault{Status: 422, Code: "processing", Message: "Image rejected"}), orphansKept},
	}
	// Rows run side by side, one simulator and committer per set of
	// capabilities, each row on a session of its own.
	groups := map[string][]int{}
	for i, row := range rows {
		groups[row.caps] = append(groups[row.caps], i)
	}
	for capsName, idx := range groups {
		t.Run("caps="+capsName, func(t *testing.T) {
			t.Parallel()
			caps, err := fhir.ParseCapabilities(capsName)
			if err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, alexsim.Options{Capabilities: caps})
			e.startCommitter(map[string]string{"ALEX_REQUEST_TIMEOUT": "1s", "COMMIT_WORKERS": "48"})
			type run struct {
				name, userID, target, commitID string
				want                           outcome
			}
			var runs []run
			for _, i := range idx {
				row := rows[i]
				for _, k := range []struct {
					name string
					i    int
				}{{"first", 0}, {"middle", n / 2}, {"last", n - 1}} {
					userID, sess := e.seed(specs(n))
					target := sess.Images[k.i].ID
					for _, r := range row.rules(target) {
						e.sim.Inject(r)
					}
					runs = append(runs, run{row.name + "/" + k.name, userID, target, e.commit(userID, sess), row.want})
				}
			}
			for _, r := range runs {
				t.Run(r.name, func(t *testing.T) {
					got := e.outcome(r.userID, r.commitID, 45*time.Second)
					fired := false
					for _, q := range e.sim.Requests() {
						fired = fired || (q.Identifier == r.target && q.Fault != "")
					}
					if !fired {
						t.Fatalf("the fault on %s never fired", r.target)
					}
					switch r.want {
					case committed:
						checkExactlyOnce(t, e.sim, got)
					case compensated, orphansKept:
						if got.CommitStatus != session.CommitNone || got.Commit.Success {
							t.Fatalf("commitStatus %s success %v, want none/false", got.CommitStatus, got.Commit.Success)
						}
						var failed []string
						for _, im := range got.Images {
							if im.Status == session.ImageFailed {
								failed = append(failed, im.ID)
								if !strings.Contains(im.Error, "ALEX refused this photo (4") {
									t.Errorf("error on %s: %q", im.ID, im.Error)
								}
							}
							if im.MediaID != "" {
								t.Errorf("%s keeps mediaId %s after a failed commit", im.ID, im.MediaID)
							}
						}
						if diff := cmp.Diff([]string{r.target}, failed); diff != "" {
							t.Errorf("failed photos (-want +got):\n%s", diff)
						}
						live := liveFor(e.sim, got)
						if r.want == compensated && (live != 0 || len(got.Commit.Orphans) != 0) {
							t.Errorf("%d Media left live, orphans %v; want none", live, got.Commit.Orphans)
						}
						if r.want == orphansKept && live != len(got.Commit.Orphans) {
							t.Errorf("%d Media live but %d listed as orphans", live, len(got.Commit.Orphans))
						}
					}
				})
			}
			checkHeaders(t, e.sim)
		})
	}
}

// checkHeaders fails unless every FHIR request carried the facility, the
// app id, and a correlation id of its own.
func checkHeaders(t *testing.T, sim *alexsim.Server) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range sim.Requests() {
		if !strings.HasPrefix(r.Path, alexsim.BasePath) {
			continue
		}
		if r.FacilityID != alexsim.DefaultFacility || r.AppID == "" || r.CorrelationID == "" || seen[r.CorrelationID] {
			t.Errorf("request %s %s: facility %q app %q correlation %q (seen before: %v)", r.Method, r.Path, r.FacilityID, r.AppID, r.CorrelationID, seen[r.CorrelationID])
		}
		seen[r.CorrelationID] = true
	}
	if len(seen) == 0 {
		t.Error("no FHIR requests")
	}
}
