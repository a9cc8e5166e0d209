package committer_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Each fault, on the first, middle and last photo: a transient one ends
// with every photo in the record exactly once; a refusal ends the commit
// with that photo refused and the others in the record, and the GP's next
// commit sends only the refused one.
func TestFaults(t *testing.T) {
	t.Parallel()
	const n = 5
	type want int
	const (
		committed want = iota // every photo exactly once, by itself
		refused               // the commit fails on the photo; a retry sends only it
	)
	rows := []struct {
		name  string
		caps  string
		fault alexsim.Fault
		times int
		want  want
		// then, if set, answers the photo's next write (after fault's).
		then *alexsim.Fault
	}{
		{"500", "", alexsim.Fault{Status: 500}, 1, committed, nil},
		{"500 twice", "", alexsim.Fault{Status: 500}, 2, committed, nil},
		{"500 after the write", "", alexsim.Fault{Status: 500, AfterStore: true}, 1, committed, nil},
		{"503 Retry-After", "", alexsim.Fault{Status: 503, RetryAfter: time.Second}, 1, committed, nil},
		{"429 Retry-After", "", alexsim.Fault{Status: 429, RetryAfter: time.Second}, 1, committed, nil},
		{"timeout", "", alexsim.Fault{Kind: alexsim.FaultTimeout}, 1, committed, nil},
		{"timeout after the write", "", alexsim.Fault{Kind: alexsim.FaultTimeout, AfterStore: true}, 1, committed, nil},
		{"reset", "", alexsim.Fault{Kind: alexsim.FaultReset}, 1, committed, nil},
		{"reset after the write", "", alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}, 1, committed, nil},
		{"empty 200", "", alexsim.Fault{Kind: alexsim.FaultEmpty}, 1, committed, nil},
		{"empty 200 after the write", "", alexsim.Fault{Kind: alexsim.FaultEmpty, AfterStore: true}, 2, committed, nil},
		{"token expiry mid-commit", "", alexsim.Fault{Kind: alexsim.FaultExpireToken}, 1, committed, nil},
		{"422", "", alexsim.Fault{Status: 422, Code: "business-rule", Message: "Image rejected"}, 1, refused, nil},
		{"400 plain JSON", "", alexsim.Fault{Status: 400, Code: "plain", Message: "Bad request"}, 1, refused, nil},
		{"reset after the write, conditional create", "conditional-create", alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}, 1, committed, nil},
		{"empty 200 after the write, conditional create", "conditional-create", alexsim.Fault{Kind: alexsim.FaultEmpty, AfterStore: true}, 1, committed, nil},
		{"reset after the write, identifier search", "search", alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}, 1, committed, nil},
		{"422, identifier search", "search", alexsim.Fault{Status: 422, Code: "processing"}, 1, refused, nil},
		// The first write is stored, its answer lost; the conditional create
		// that follows is refused, or finds several Media, before ALEX
		// looks: the photo is in the record all the same, and is found
		// there rather than sent again unconditionally or left in conflict.
		{"reset after the write, then 422, conditional create", "conditional-create", alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}, 1, committed,
			&alexsim.Fault{Status: 422, Code: "processing", Message: "Image rejected"}},
		{"reset after the write, then 412, conditional create", "conditional-create", alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}, 1, committed,
			&alexsim.Fault{Status: 412, Code: "duplicate", Message: "several Media match"}},
		// ... or throttled (429, before ALEX looks): it stored nothing, but
		// the first write did, so the photo is not sent unconditionally.
		{"reset after the write, then 429, conditional create", "conditional-create", alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}, 1, committed,
			&alexsim.Fault{Status: 429, RetryAfter: time.Second}},
		// The first write's answer is lost but nothing was stored; the
		// conditional create that follows is refused: the lookup finds
		// nothing, so the photo is refused (ALEX holds none of it), not
		// left for the GP to check by hand although ALEX could be asked.
		{"reset, then 422, conditional create", "conditional-create", alexsim.Fault{Kind: alexsim.FaultReset}, 1, refused,
			&alexsim.Fault{Status: 422, Code: "processing", Message: "Image rejected"}},
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
				want                           want
			}
			var runs []run
			for _, i := range idx {
				row := rows[i]
				for _, k := range []struct {
					name string
					i    int
				}{{"first", 0}, {"middle", n / 2}, {"last", n - 1}} {
					userID, sess := e.seed(specs(n))
					target := sess.Images[k.i]
					// then's rule goes first: the simulator counts a rule's
					// requests only up to the first rule that fires, so
					// placed after fault's it would miss the requests
					// fault took.
					if row.then != nil {
						e.sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: target.MediaIdentifier, Nth: row.times + 1, Fault: *row.then})
					}
					e.sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: target.MediaIdentifier, Times: row.times, Fault: row.fault})
					runs = append(runs, run{row.name + "/" + k.name, userID, target.ID, e.commit(userID, sess), row.want})
				}
			}
			for _, r := range runs {
				t.Run(r.name, func(t *testing.T) {
					got := e.outcome(r.userID, r.commitID, 45*time.Second)
					target, _ := got.Image(r.target)
					fired := false
					for _, q := range e.sim.Requests() {
						fired = fired || (q.Identifier == target.MediaIdentifier && q.Fault != "")
					}
					if !fired {
						t.Fatalf("the fault on %s never fired (commit %s: %q)", r.target, got.CommitStatus, got.Commit.Message)
					}
					if r.want == committed {
						e.checkExactlyOnce(t, got)
						return
					}
					if got.CommitStatus != session.CommitNone || got.Commit.Success || got.Commit.Done != n-1 {
						t.Fatalf("commitStatus %s success %v done %d, want none/false/%d", got.CommitStatus, got.Commit.Success, got.Commit.Done, n-1)
					}
					var notIn []session.Image
					for _, im := range got.Images {
						if im.ID != r.target {
							notIn = append(notIn, im)
						}
					}
					if problems := e.inRecord(got, notIn); len(problems) > 0 {
						t.Fatalf("the other photos are not in the record once:\n%s", strings.Join(problems, "\n"))
					}
					if target.State() != session.PhotoRefused || target.Status != session.ImageFailed || !strings.Contains(target.Error, "ALEX refused this photo (4") {
						t.Fatalf("refused photo: %s %s %q", target.State(), target.Status, target.Error)
					}
					if !strings.Contains(got.Commit.Message, "1 photo needs your attention") || !strings.Contains(got.Commit.Message, "4 of 5 photos are in the patient record") {
						t.Errorf("message %q", got.Commit.Message)
					}
					// The GP commits again (the fault was one-off): only the
					// refused photo is sent.
					posts := postsBy(e.sim)
					again := e.commit(r.userID, got)
					final := e.outcome(r.userID, again, 45*time.Second)
					e.checkExactlyOnce(t, final)
					after := postsBy(e.sim)
					for _, im := range final.Images {
						if d := after[im.MediaIdentifier] - posts[im.MediaIdentifier]; (d == 1) != (im.ID == r.target) {
							t.Errorf("%s was sent %d times by the second commit", im.ID, d)
						}
					}
				})
			}
			checkHeaders(t, e.sim)
		})
	}
}

// postsBy counts the Media POSTs per identifier.
func postsBy(sim *alexsim.Server) map[string]int {
	out := map[string]int{}
	for _, r := range sim.Requests() {
		if r.Method == "POST" && r.Identifier != "" {
			out[r.Identifier]++
		}
	}
	return out
}

// A commit that ALEX keeps failing says so in the session (reason,
// attempt, next try) while it waits; the GP stops waiting, edits and
// deletes what is not in the record, and a later commit sends only the
// rest, each exactly once.
func TestStuckCommitStops(t *testing.T) {
	t.Parallel()
	e := newEnv(t, alexsim.Options{})
	// Attempts 3 s apart: the GP stops between two of them.
	e.startCommitter(map[string]string{"COMMIT_RETRY_INITIAL": "3s", "COMMIT_RETRY_MAX": "3s"})
	userID, sess := e.seed(specs(4))
	stuck := sess.Images[2]
	e.sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: stuck.MediaIdentifier, Times: -1, Fault: alexsim.Fault{Status: 503}})
	e.commit(userID, sess)
	ctx := context.Background()
	var s session.Session
	testenv.Eventually(t, 20*time.Second, "the stuck commit to say why", func() bool {
		s, _ = e.store.Peek(ctx, userID)
		// (A loaded machine may first say ALEX is slow while attempt 1 runs.)
		return s.Commit != nil && s.Commit.Waiting != nil && s.Commit.Waiting.Reason != session.WaitALEXSlow && s.Commit.Done == 3
	})
	w := s.Commit.Waiting
	if w.Reason != session.WaitALEXUnavailable || w.Message != "ALEX is unavailable (503 Service Unavailable)" || w.Attempt != 1 ||
		!w.NextTryAt.After(s.Commit.RequestedAt) || !w.GiveUpAt.Equal(s.Commit.RequestedAt.Add(2*time.Minute)) || s.Commit.Attempt != w.Attempt {
		t.Fatalf("waiting %+v, attempt %d, requested %s", w, s.Commit.Attempt, s.Commit.RequestedAt)
	}
	s, err := e.store.StopCommit(ctx, userID, sess.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	if s.CommitStatus != session.CommitNone || !s.Commit.Stopped || s.Commit.Done != 3 {
		t.Fatalf("after stop: %s stopped=%v done=%d", s.CommitStatus, s.Commit.Stopped, s.Commit.Done)
	}
	// The photo not in the record can be changed; one in the record cannot.
	notes := "re-taken later"
	if _, err := e.store.UpdateMetadata(ctx, userID, sess.SessionID, stuck.ID, session.MetadataPatch{Notes: &notes}); err != nil {
		t.Fatalf("edit the stuck photo: %v", err)
	}
	if _, _, err := e.store.RemoveImage(ctx, userID, sess.SessionID, sess.Images[0].ID); err == nil {
		t.Fatal("deleted a photo that is in the record")
	}
	posts := postsBy(e.sim)
	e.sim.ClearFaults()
	again := e.commit(userID, s)
	final := e.outcome(userID, again, 30*time.Second)
	e.checkExactlyOnce(t, final)
	after := postsBy(e.sim)
	var sent []string
	for _, im := range final.Images {
		if after[im.MediaIdentifier] > posts[im.MediaIdentifier] {
			sent = append(sent, im.ID)
		}
	}
	if diff := cmp.Diff([]string{stuck.ID}, sent); diff != "" {
		t.Errorf("photos sent by the later commit (-want +got):\n%s", diff)
	}
	if got, _ := final.Image(stuck.ID); got.Metadata.Notes != notes {
		t.Errorf("the edit did not reach the record's photo: %q", got.Metadata.Notes)
	}
}

// The retry budget ends a commit ALEX never lets through in a clear failed
// state with nothing lost: what went in stays in, the rest waits for the
// next commit, which, once ALEX is back, completes with each photo once.
func TestRetryBudget(t *testing.T) {
	t.Parallel()
	e := newEnv(t, alexsim.Options{})
	e.startCommitter(map[string]string{"COMMIT_RETRY_BUDGET": "3s"})
	userID, sess := e.seed(specs(3))
	never := sess.Images[2]
	e.sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: sess.Images[1].MediaIdentifier, Times: -1, Fault: alexsim.Fault{Kind: alexsim.FaultEmpty, AfterStore: true}})
	e.sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: never.MediaIdentifier, Times: -1, Fault: alexsim.Fault{Status: 503}})
	got := e.outcome(userID, e.commit(userID, sess), 30*time.Second)
	if got.CommitStatus != session.CommitNone || got.Commit.Success || !strings.HasPrefix(got.Commit.Message, "Gave up after 3s: ") ||
		!strings.Contains(got.Commit.Message, "nothing is lost") {
		t.Fatalf("after the budget: %s %q", got.CommitStatus, got.Commit.Message)
	}
	var in []session.Image
	for _, im := range got.Images {
		switch im.State() {
		case session.PhotoInRecord:
			in = append(in, im)
		case session.PhotoPending, session.PhotoUnknown:
		default:
			t.Errorf("%s is %s after the budget ran out", im.ID, im.State())
		}
	}
	if g, _ := got.Image(never.ID); g.State() == session.PhotoInRecord {
		t.Errorf("%s is in the record although ALEX never took it", never.ID)
	}
	if problems := e.inRecord(got, in); len(problems) > 0 || got.Commit.Done != len(in) {
		t.Errorf("done %d; photos in the record:\n%s", got.Commit.Done, strings.Join(problems, "\n"))
	}
	e.sim.ClearFaults()
	e.checkExactlyOnce(t, e.outcome(userID, e.commit(userID, got), 30*time.Second))
}

// Without an identifier search and with no NHI for the patient, a photo
// whose write may have landed cannot be looked up: it needs checking and
// is never sent again without the GP's word. The GP deletes the one the
// record holds and has the other sent again, under a new identifier.
func TestNeedsChecking(t *testing.T) {
	t.Parallel()
	e := newEnv(t, alexsim.Options{Patients: map[string]string{testPatient: ""}})
	e.startCommitter(nil)
	userID, sess := e.seed(specs(3))
	landed, lost := sess.Images[0], sess.Images[1]
	e.sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: landed.MediaIdentifier, Fault: alexsim.Fault{Kind: alexsim.FaultReset, AfterStore: true}})
	e.sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: lost.MediaIdentifier, Fault: alexsim.Fault{Kind: alexsim.FaultReset}})
	got := e.outcome(userID, e.commit(userID, sess), 30*time.Second)
	for _, im := range []session.Image{landed, lost} {
		if g, _ := got.Image(im.ID); g.State() != session.PhotoNeedsChecking || g.Error == "" {
			t.Fatalf("%s: %s %q", im.ID, g.State(), g.Error)
		}
	}
	if got.CommitStatus != session.CommitNone || got.Commit.Done != 1 {
		t.Fatalf("commit %s done %d", got.CommitStatus, got.Commit.Done)
	}
	// Nothing was sent again without the GP's word.
	if p := postsBy(e.sim); p[landed.MediaIdentifier] != 1 || p[lost.MediaIdentifier] != 1 {
		t.Fatalf("posts %v", p)
	}
	ctx := context.Background()
	if _, _, err := e.store.RemoveImage(ctx, userID, sess.SessionID, landed.ID); err != nil {
		t.Fatal(err)
	}
	cid := "c" + testenv.ID()
	if _, err := e.store.BeginCommit(ctx, userID, sess.SessionID, cid, lost.ID); err != nil {
		t.Fatal(err)
	}
	final := e.outcome(userID, cid, 30*time.Second)
	e.checkExactlyOnce(t, final)
	resent, _ := final.Image(lost.ID)
	if resent.MediaIdentifier == lost.MediaIdentifier {
		t.Error("the photo was sent again under the identifier whose fate is unknown")
	}
	if n := len(e.sim.ByIdentifier(fhir.DefaultImageIDNS, landed.MediaIdentifier)); n != 1 {
		t.Errorf("the deleted photo's Media: %d, want the 1 that landed", n)
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

// An attempt that waits on a slow ALEX says so within seconds, with the
// time it stops waiting, then goes on to commit once ALEX answers.
func TestSlowAnswerIsShown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, alexsim.Options{})
	e.startCommitter(map[string]string{"ALEX_REQUEST_TIMEOUT": "20s"})
	userID, sess := e.seed(specs(2))
	e.sim.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: sess.Images[0].MediaIdentifier,
		Fault: alexsim.Fault{Kind: alexsim.FaultTimeout, Hold: 12 * time.Second}})
	cid := e.commit(userID, sess)
	var s session.Session
	testenv.Eventually(t, 20*time.Second, "the slow answer to show", func() bool {
		s, _ = e.store.Peek(context.Background(), userID)
		return s.Commit != nil && s.Commit.Waiting != nil
	})
	if w := s.Commit.Waiting; w.Reason != session.WaitALEXSlow || w.Attempt != 1 || w.NextTryAt.Sub(s.Commit.RequestedAt) < 20*time.Second {
		t.Fatalf("waiting %+v (requested %s)", w, s.Commit.RequestedAt)
	}
	e.checkExactlyOnce(t, e.outcome(userID, cid, 60*time.Second))
}
