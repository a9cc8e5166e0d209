package session_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// backends are the Redis implementations the store runs on: the real
// redis-server (production and tests) and miniredis (the local stack without
// REDIS_URL; its own process, so this module does not link it). Every store
// test is a contract test run on both.
var backends = map[string]func(t *testing.T) (redis.Cmdable, string){
	"redis-server": func(t *testing.T) (redis.Cmdable, string) { return testenv.Redis(t) },
	"miniredis":    func(t *testing.T) (redis.Cmdable, string) { return testenv.MiniRedis(t), "mini:" },
}

// eachBackend runs test once per backend.
func eachBackend(t *testing.T, test func(t *testing.T, st *session.Store, rdb redis.Cmdable)) {
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			rdb, prefix := open(t)
			test(t, session.NewStore(rdb, session.Options{Prefix: prefix}), rdb)
		})
	}
}

func start(t *testing.T, st *session.Store, user, patient string) session.Started {
	t.Helper()
	out, err := st.Start(context.Background(), session.StartParams{
		UserID: user, PatientID: patient, EncounterID: "enc_1", Token: "tok-" + testenv.ID(), SessionID: "s-" + testenv.ID(),
	})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	return out
}

func image(id string) session.Image {
	return session.Image{ID: id, S3Key: "temp/u1/" + id + ".jpg", Uploaded: true, Source: "mobile", ContentType: "image/jpeg", Size: 1000, CapturedAt: time.Now().UTC()}
}

func outboxLen(t *testing.T, rdb redis.Cmdable, st *session.Store) int64 {
	n, err := rdb.XLen(context.Background(), st.Keys.Outbox()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Promise 1: concurrent records never lose or duplicate a photo, and the cap
// holds exactly. Run 20 times; -race is on in make test.
func TestConcurrentAddKeepsEveryImageAndTheCap(t *testing.T) {
	for _, tc := range []struct {
		name               string
		writers            int
		wantKept, wantCaps int
	}{
		{"50 photos", 50, 50, 0},
		{"60 photos", 60, 50, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := range 20 {
				rdb, prefix := testenv.Redis(t)
				st := session.NewStore(rdb, session.Options{Prefix: prefix})
				start(t, st, "u1", "p1")
				var capped atomic.Int32
				var wg sync.WaitGroup
				for i := range tc.writers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, _, err := st.AddImage(context.Background(), "u1", "", image(fmt.Sprintf("img-%d", i)))
						switch {
						case errors.Is(err, session.ErrCapReached):
							capped.Add(1)
						case err != nil:
							t.Errorf("add: %v", err)
						}
					}()
				}
				wg.Wait()
				s, err := st.Get(context.Background(), "u1")
				if err != nil {
					t.Fatal(err)
				}
				seen := map[string]bool{}
				for _, im := range s.Images {
					if seen[im.ID] {
						t.Fatalf("round %d: image %s twice", round, im.ID)
					}
					seen[im.ID] = true
				}
				if len(s.Images) != tc.wantKept || int(capped.Load()) != tc.wantCaps {
					t.Fatalf("round %d: kept %d refused %d, want %d and %d", round, len(s.Images), capped.Load(), tc.wantKept, tc.wantCaps)
				}
				// One image.uploaded per kept photo, plus session.started.
				if got, want := outboxLen(t, rdb, st), int64(tc.wantKept+1); got != want {
					t.Fatalf("round %d: outbox has %d events, want %d", round, got, want)
				}
			}
		})
	}
}

// The seeds' GET, modify, SET: kept as a control to show the test above can
// fail. Under the same concurrency it loses photos.
func TestGetModifySetLosesPhotos(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	ctx := context.Background()
	key := prefix + "user:u1"
	lost := 0
	for range 5 {
		rdb.Set(ctx, key, `{"images":[]}`, time.Hour)
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				raw, _ := rdb.Get(ctx, key).Result()
				var s struct {
					Images []session.Image `json:"images"`
				}
				_ = json.Unmarshal([]byte(raw), &s)
				s.Images = append(s.Images, image(fmt.Sprintf("img-%d", i)))
				b, _ := json.Marshal(s)
				rdb.Set(ctx, key, b, time.Hour)
			}()
		}
		wg.Wait()
		raw, _ := rdb.Get(ctx, key).Result()
		var s struct {
			Images []session.Image `json:"images"`
		}
		_ = json.Unmarshal([]byte(raw), &s)
		lost += 50 - len(s.Images)
	}
	if lost == 0 {
		t.Fatal("the GET-modify-SET control lost no photo in 5 rounds of 50; the concurrency test is not exercising races")
	}
	t.Logf("GET-modify-SET lost %d of 250 photos", lost)
}

func TestAddImageIsIdempotent(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		start(t, st, "u1", "p1")
		ctx := context.Background()
		img := image("a")
		if _, added, err := st.AddImage(ctx, "u1", "", img); err != nil || !added {
			t.Fatalf("first add: added=%v err=%v", added, err)
		}
		s, added, err := st.AddImage(ctx, "u1", "", img)
		if err != nil || added {
			t.Fatalf("second add: added=%v err=%v", added, err)
		}
		if len(s.Images) != 1 || outboxLen(t, rdb, st) != 2 {
			t.Fatalf("after repeat: %d images, %d events", len(s.Images), outboxLen(t, rdb, st))
		}
		other := image("a")
		other.S3Key = "temp/u1/other.jpg"
		if _, _, err := st.AddImage(ctx, "u1", "", other); !errors.Is(err, session.ErrImageIDConflict) {
			t.Fatalf("same id, other key: %v", err)
		}
	})
}

func TestPatientSwitch(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, _ redis.Cmdable) {
		ctx := context.Background()
		first := start(t, st, "u1", "p1")
		st.AddImage(ctx, "u1", "", image("a"))
		st.AddImage(ctx, "u1", "", image("b"))

		// Same patient and encounter: the session goes on with its photos.
		again := start(t, st, "u1", "p1")
		if !again.Reused || again.Session.SessionID != first.Session.SessionID || len(again.Session.Images) != 2 {
			t.Fatalf("same patient: reused=%v images=%d", again.Reused, len(again.Session.Images))
		}
		// Another patient: refused, naming the count, and nothing changes.
		_, err := st.Start(ctx, session.StartParams{UserID: "u1", PatientID: "p2", EncounterID: "enc_9", Token: "t2", SessionID: "s2"})
		var unc *session.UncommittedError
		if !errors.As(err, &unc) || unc.N != 2 {
			t.Fatalf("other patient: %v", err)
		}
		if _, err := st.Token(ctx, "t2"); !errors.Is(err, session.ErrTokenNotFound) {
			t.Fatalf("refused start left a token: %v", err)
		}
		s, _ := st.Get(ctx, "u1")
		if s.PatientID != "p1" || len(s.Images) != 2 {
			t.Fatalf("refused start changed the session: %+v", s)
		}
		// With discard: replaced, and the old photos handed back for clean-up.
		out, err := st.Start(ctx, session.StartParams{UserID: "u1", PatientID: "p2", EncounterID: "enc_9", Token: "t3", SessionID: "s3", Discard: true})
		if err != nil {
			t.Fatal(err)
		}
		if out.Session.PatientID != "p2" || len(out.Session.Images) != 0 || len(out.Discarded) != 2 {
			t.Fatalf("discard: patient %s, %d images, %d discarded", out.Session.PatientID, len(out.Session.Images), len(out.Discarded))
		}
	})
}

func TestPairIsSingleUse(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, _ redis.Cmdable) {
		ctx := context.Background()
		out := start(t, st, "u1", "p1")
		s, _ := st.Get(ctx, "u1")
		// A second start for the same patient keeps the session and issues a
		// token of our choosing.
		token := "tok-pair"
		if _, err := st.Start(ctx, session.StartParams{UserID: "u1", PatientID: "p1", EncounterID: "enc_1", Token: token, SessionID: "ignored"}); err != nil {
			t.Fatal(err)
		}
		got, err := st.Pair(ctx, token, "cred-1", "test")
		if err != nil {
			t.Fatal(err)
		}
		if got.SessionID != out.Session.SessionID || got.SessionID != s.SessionID {
			t.Fatalf("paired to session %s, want %s", got.SessionID, s.SessionID)
		}
		if _, err := st.Pair(ctx, token, "cred-2", "test"); !errors.Is(err, session.ErrTokenUsed) {
			t.Fatalf("second pair: %v", err)
		}
		c, err := st.Credential(ctx, "cred-1")
		if err != nil || c.UserID != "u1" || c.SessionID != s.SessionID || c.PhoneID != session.PhoneID("cred-1") {
			t.Fatalf("credential: %+v %v", c, err)
		}
		if _, err := st.Credential(ctx, "cred-2"); err == nil {
			t.Fatal("refused pairing stored a credential")
		}
	})
}

func TestCommitLifecycle(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, _ redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		if _, err := st.BeginCommit(ctx, "u1", "", "c0"); !errors.Is(err, session.ErrNothingToCommit) {
			t.Fatalf("empty commit: %v", err)
		}
		st.AddImage(ctx, "u1", "", image("a"))
		s, _, _ := st.AddImage(ctx, "u1", "", image("b"))
		if _, err := st.BeginCommit(ctx, "u1", "", "c1"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.BeginCommit(ctx, "u1", "", "c2"); !errors.Is(err, session.ErrCommitInProgress) {
			t.Fatalf("second commit: %v", err)
		}
		if _, _, err := st.AddImage(ctx, "u1", "", image("c")); !errors.Is(err, session.ErrCommitInProgress) {
			t.Fatalf("add during commit: %v", err)
		}
		inRecord := func(im session.Image, media string) session.Recorded {
			t.Helper()
			r, changed, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: im.ID, Identifier: im.MediaIdentifier, State: session.PhotoInRecord, MediaID: media})
			if err != nil || !changed {
				t.Fatalf("in record: %v changed=%v", err, changed)
			}
			return r
		}
		if r := inRecord(s.Images[0], "m1"); r.Commit.Done != 1 || r.Image.ID != s.Images[0].ID || r.Image.MediaID != "m1" {
			t.Fatalf("after one photo: done %d, photo %s in record as %q", r.Commit.Done, r.Image.ID, r.Image.MediaID)
		}
		if _, _, err := st.FinishCommit(ctx, "u1", "c1"); !errors.Is(err, session.ErrNotInRecord) {
			t.Fatalf("finish with a photo missing: %v", err)
		}
		inRecord(s.Images[1], "m2")
		if _, _, err := st.FinishCommit(ctx, "u1", "c2"); !errors.Is(err, session.ErrStale) {
			t.Fatalf("finish of another commit: %v", err)
		}
		got, changed, err := st.FinishCommit(ctx, "u1", "c1")
		if err != nil || !changed {
			t.Fatalf("finish: %v %v", err, changed)
		}
		if diff := cmp.Diff(session.List[string]{"m1", "m2"}, got.Commit.MediaResourceIDs); diff != "" || got.CommitStatus != session.CommitCommitted {
			t.Fatalf("finish: status %s, ids diff %s", got.CommitStatus, diff)
		}
		if _, changed, _ := st.FinishCommit(ctx, "u1", "c1"); changed {
			t.Fatal("second finish changed the session")
		}
	})
}

// A failed commit keeps what is in the record and names the photos the GP
// must act on; the next commit starts from there.
func TestFailCommitKeepsTheRecord(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		st.AddImage(ctx, "u1", "", image("a"))
		s, _, _ := st.AddImage(ctx, "u1", "", image("b"))
		st.BeginCommit(ctx, "u1", "", "c1")
		a, b := s.Images[0], s.Images[1]
		st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: a.ID, Identifier: a.MediaIdentifier, State: session.PhotoInRecord, MediaID: "m1"})
		st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: b.ID, Identifier: b.MediaIdentifier, State: session.PhotoRefused, Error: "invalid body site"})
		got, _, err := st.FailCommit(ctx, "u1", "c1", "ALEX refused photo b", nil)
		if err != nil {
			t.Fatal(err)
		}
		if got.CommitStatus != session.CommitNone || got.Commit.Done != 1 || got.Images[0].MediaID != "m1" || got.Images[1].Status != session.ImageFailed || got.Images[1].Error == "" {
			t.Fatalf("after fail: %+v", got)
		}
		ev, data := lastEvent(t, rdb, st)
		if ev.Type != events.CommitFailed || data.Done != 1 || len(data.Errors) != 1 || data.Errors[0].ImageID != "b" || data.Message != "ALEX refused photo b" {
			t.Fatalf("failed event %+v", data)
		}
		// A retry may begin again, with photo a still in the record.
		got, err = st.BeginCommit(ctx, "u1", "", "c2")
		if err != nil || got.Commit.Done != 1 || got.Images[1].State() != session.PhotoPending {
			t.Fatalf("retry commit: %v %+v", err, got.Commit)
		}
	})
}

func TestEventsCarryVersionAndEnvelope(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		st.AddImage(ctx, "u1", "", image("a"))
		msgs, err := rdb.XRange(ctx, st.Keys.Outbox(), "-", "+").Result()
		if err != nil || len(msgs) != 2 {
			t.Fatalf("outbox: %v %d", err, len(msgs))
		}
		ev, err := events.Decode([]byte(msgs[1].Values["event"].(string)))
		if err != nil {
			t.Fatal(err)
		}
		var data session.ImageEvent
		if err := ev.DataAs(&data); err != nil {
			t.Fatal(err)
		}
		if ev.Type != events.ImageUploaded || data.Version != 2 || data.Image.ID != "a" || data.ImageCount != 1 || msgs[1].Values["id"] != ev.ID {
			t.Fatalf("event: %+v data %+v", ev, data)
		}
		if got, want := msgs[1].Values["subject"], "clinimg.image.uploaded.u1"; got != want {
			t.Fatalf("subject %v, want %v", got, want)
		}
	})
}

// Nothing is added to a session whose patient is not the one the desktop has
// open; the refusal changes nothing and emits nothing.
func TestAddImageRefusesAnotherPatient(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		before := outboxLen(t, rdb, st)
		if _, _, err := st.AddImageBound(ctx, "u1", session.Binding{PatientID: "p2"}, image("a")); !errors.Is(err, session.ErrPatientMismatch) {
			t.Fatalf("add for p2 to p1's session: %v, want ErrPatientMismatch", err)
		}
		if s, _ := st.Get(ctx, "u1"); len(s.Images) != 0 || outboxLen(t, rdb, st) != before {
			t.Fatalf("refused add left %d images, %d new events", len(s.Images), outboxLen(t, rdb, st)-before)
		}
		if _, added, err := st.AddImageBound(ctx, "u1", session.Binding{PatientID: "p1"}, image("a")); err != nil || !added {
			t.Fatalf("add for the open patient: added=%v err=%v", added, err)
		}
	})
}

// Each phone's pending count is kept apart, summed, emitted once per change,
// and removed at 0.
func TestSetPending(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		sid := start(t, st, "u1", "p1").Session.SessionID
		// Two phones paired with the session (a QR code each).
		for i, cred := range []string{"cred-a", "cred-b"} {
			tok := fmt.Sprintf("tok-pending-%d", i)
			if _, err := st.Start(ctx, session.StartParams{UserID: "u1", PatientID: "p1", EncounterID: "enc_1", Token: tok, SessionID: "ignored"}); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Pair(ctx, tok, cred, "test"); err != nil {
				t.Fatal(err)
			}
		}
		aaa, bbb := session.PhoneID("cred-a"), session.PhoneID("cred-b")
		steps := []struct {
			phone   string
			count   int
			changed bool
			total   int
		}{
			{aaa, 0, false, 0}, // a phone that holds nothing, before anything was reported
			{aaa, 2, true, 2},
			{aaa, 2, false, 2},
			{bbb, 1, true, 3},
			{aaa, 0, true, 1},
			{aaa, 0, false, 1},
			{bbb, 0, true, 0},
		}
		for i, s := range steps {
			before := outboxLen(t, rdb, st)
			got, changed, err := st.SetPending(ctx, "u1", sid, s.phone, s.count)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			events := outboxLen(t, rdb, st) - before
			if changed != s.changed || got.PendingPhotos() != s.total || (events == 1) != s.changed {
				t.Fatalf("step %d: changed=%v total=%d events=%d, want changed=%v total=%d", i, changed, got.PendingPhotos(), events, s.changed, s.total)
			}
		}
		if _, _, err := st.SetPending(ctx, "u1", "another-session", aaa, 1); !errors.Is(err, session.ErrSessionChanged) {
			t.Fatalf("pending for an ended session: %v", err)
		}
		// A phone removed on the desktop while its report was on the way:
		// the report is refused, so no count is left that nothing clears.
		if _, _, err := st.SetPending(ctx, "u1", sid, bbb, 2); err != nil {
			t.Fatal(err)
		}
		if _, err := st.RemovePhone(ctx, "u1", "", bbb); err != nil {
			t.Fatal(err)
		}
		before := outboxLen(t, rdb, st)
		if _, _, err := st.SetPending(ctx, "u1", sid, bbb, 3); !errors.Is(err, session.ErrPhoneRemoved) {
			t.Fatalf("pending from a removed phone: %v, want ErrPhoneRemoved", err)
		}
		got, err := st.Peek(ctx, "u1")
		if err != nil || got.PendingPhotos() != 0 || outboxLen(t, rdb, st) != before {
			t.Fatalf("after a removed phone's report: pending %d, err %v", got.PendingPhotos(), err)
		}
	})
}

// The commit's ledger lives on the session: each photo's identifier is the
// server's, what is in the record stays there through stops and new
// commits, and a state changes only from the tries its writer saw.
func TestPhotoLedger(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		a := image("a")
		a.MediaIdentifier, a.CommitState, a.MediaID = "client-chosen", session.PhotoInRecord, "forged"
		st.AddImage(ctx, "u1", "", a)
		s, _, err := st.AddImage(ctx, "u1", "", image("b"))
		if err != nil {
			t.Fatal(err)
		}
		ia, ib := s.Images[0], s.Images[1]
		if ia.MediaIdentifier == "" || ia.MediaIdentifier == "client-chosen" || ia.MediaIdentifier == ib.MediaIdentifier ||
			ia.State() != session.PhotoPending || ia.MediaID != "" {
			t.Fatalf("recorded photos: %+v %+v", ia, ib)
		}
		if _, err := st.BeginCommit(ctx, "u1", "", "c1"); err != nil {
			t.Fatal(err)
		}
		send := func(im session.Image, tries int) error {
			_, _, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: im.ID, Identifier: im.MediaIdentifier,
				State: session.PhotoSending, Tries: tries, Hash: "h-" + im.ID})
			return err
		}
		before := outboxLen(t, rdb, st)
		if err := send(ia, 0); err != nil {
			t.Fatal(err)
		}
		if err := send(ia, 0); !errors.Is(err, session.ErrStale) {
			t.Fatalf("second send from the same tries: %v, want ErrStale", err)
		}
		if outboxLen(t, rdb, st) != before {
			t.Fatal("sending emitted an event")
		}
		r, changed, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: "a", Identifier: ia.MediaIdentifier, State: session.PhotoInRecord, MediaID: "m1"})
		// Still being processed: the status stays so its previews land.
		if err != nil || !changed || r.Commit.Done != 1 || r.Image.ID != "a" || r.Image.State() != session.PhotoInRecord || r.Image.Status != session.ImageProcessing || r.Image.Tries != 1 {
			t.Fatalf("in record: %v changed=%v %+v", err, changed, r.Image)
		}
		if diff := cmp.Diff(session.List[string]{"h-a"}, r.Image.SentHashes); diff != "" {
			t.Errorf("sent hashes (-want +got):\n%s", diff)
		}
		if err := send(ib, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := st.CommitAttempt(ctx, "u1", "c1", 1, &session.CommitWait{Reason: session.WaitALEXUnavailable, Message: "ALEX is unavailable (503)", Attempt: 1}); err != nil {
			t.Fatal(err)
		}
		if ev, data := lastEvent(t, rdb, st); ev.Type != events.CommitProgress || data.Attempt != 1 || data.Waiting == nil || data.Waiting.Reason != session.WaitALEXUnavailable || data.Done != 1 {
			t.Fatalf("stuck event %s %+v", ev.Type, data)
		}
		s, err = st.StopCommit(ctx, "u1", "")
		if err != nil {
			t.Fatal(err)
		}
		if s.CommitStatus != session.CommitNone || !s.Commit.Stopped || s.Commit.Waiting != nil || s.Images[1].State() != session.PhotoUnknown ||
			s.Commit.Message != "Stopped waiting for ALEX. 1 of 2 photos are in the patient record and will stay there; the rest are kept here to commit later." {
			t.Fatalf("after stop: %s %+v %+v", s.CommitStatus, s.Commit, s.Images[1])
		}
		if ev, data := lastEvent(t, rdb, st); ev.Type != events.CommitFailed || !data.Stopped || data.Done != 1 || data.Total != 2 {
			t.Fatalf("stop event %s %+v", ev.Type, data)
		}
		if _, err := st.StopCommit(ctx, "u1", ""); !errors.Is(err, session.ErrNoCommit) {
			t.Fatalf("second stop: %v", err)
		}
		if _, err := st.CommitAttempt(ctx, "u1", "c1", 2, nil); !errors.Is(err, session.ErrStale) {
			t.Fatalf("attempt after stop: %v", err)
		}
		// Nothing written is forgotten or changed behind the record's back.
		for _, c := range []struct {
			id   string
			want error
		}{{"a", session.ErrInRecord}, {"b", session.ErrMaybeInRecord}} {
			if _, _, err := st.RemoveImage(ctx, "u1", "", c.id); !errors.Is(err, c.want) {
				t.Errorf("delete %s: %v, want %v", c.id, err, c.want)
			}
			if _, err := st.UpdateMetadata(ctx, "u1", "", c.id, session.MetadataPatch{Notes: ptr("x")}); !errors.Is(err, c.want) {
				t.Errorf("edit %s: %v, want %v", c.id, err, c.want)
			}
		}
		if err := send(ib, 1); !errors.Is(err, session.ErrStale) {
			t.Fatalf("send after stop: %v", err)
		}
		// The answer to b's write arrives after the stop: it is a fact.
		if _, _, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: "b", Identifier: ib.MediaIdentifier, State: session.PhotoInRecord, MediaID: "m2"}); err != nil {
			t.Fatal(err)
		}
		s, err = st.BeginCommit(ctx, "u1", "", "c2")
		if err != nil || s.Commit.Done != 2 || s.Images[0].MediaID != "m1" || s.Images[1].MediaID != "m2" {
			t.Fatalf("begin after stop: %v %+v", err, s.Commit)
		}
		var dup *session.DuplicateError
		if _, _, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c2", ImageID: "a", Identifier: ia.MediaIdentifier, State: session.PhotoInRecord, MediaID: "m9"}); !errors.As(err, &dup) || dup.MediaID != "m1" {
			t.Fatalf("a second Media for a: %v", err)
		}
		if _, _, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c2", ImageID: "a", Identifier: "other", State: session.PhotoInRecord, MediaID: "m1"}); !errors.Is(err, session.ErrImageNotFound) {
			t.Fatalf("wrong identifier: %v", err)
		}
	})
}

// Recording a photo's commit state reads and writes that photo alone: the
// session's other photos stay as stored (one is stored with a space no
// encoder writes, so rewriting it shows), yet the commit's progress still
// counts every photo in the record.
func TestRecordPhotoTouchesOnlyItsPhoto(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		for _, id := range []string{"a", "b", "c"} {
			if _, _, err := st.AddImage(ctx, "u1", "", image(id)); err != nil {
				t.Fatal(err)
			}
		}
		s, err := st.BeginCommit(ctx, "u1", "", "c1")
		if err != nil {
			t.Fatal(err)
		}
		in := func(im session.Image, media string) session.Recorded {
			t.Helper()
			r, _, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: im.ID, Identifier: im.MediaIdentifier, State: session.PhotoInRecord, MediaID: media})
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		in(s.Images[1], "m-b")
		key := st.Keys.User("u1")
		stored := func(id string) string {
			t.Helper()
			raw, err := rdb.HGet(ctx, key, "image:"+id).Result()
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}
		b := stored("b")
		c := "{ " + strings.TrimPrefix(stored("c"), "{")
		if err := rdb.HSet(ctx, key, "image:c", c).Err(); err != nil {
			t.Fatal(err)
		}
		r := in(s.Images[0], "m-a")
		if r.Image.ID != "a" || r.Image.MediaID != "m-a" || r.Commit.Done != 2 {
			t.Errorf("recorded %s as %q, done %d; want a as m-a, done 2", r.Image.ID, r.Image.MediaID, r.Commit.Done)
		}
		if _, data := lastEvent(t, rdb, st); data.Done != 2 || data.Total != 3 {
			t.Errorf("event: done %d of %d, want 2 of 3", data.Done, data.Total)
		}
		if got := stored("b"); got != b {
			t.Errorf("photo b rewritten:\n%s\nwas\n%s", got, b)
		}
		if got := stored("c"); got != c {
			t.Errorf("photo c rewritten:\n%s\nwas\n%s", got, c)
		}
		got, err := st.Peek(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		if im, _ := got.Image("c"); im.State() != session.PhotoPending || got.Commit.Done != 2 {
			t.Errorf("after: photo c %s, done %d", im.State(), got.Commit.Done)
		}
	})
}

// A refused photo is tried again by the next commit; one that needs
// checking is sent again only when the GP names it, under a new identifier.
func TestRefusedAndResend(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, _ redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		st.AddImage(ctx, "u1", "", image("a"))
		s, _, _ := st.AddImage(ctx, "u1", "", image("b"))
		ia, ib := s.Images[0], s.Images[1]
		st.BeginCommit(ctx, "u1", "", "c1")
		set := func(im session.Image, state session.PhotoState, tries int, why string) {
			t.Helper()
			if _, _, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: im.ID, Identifier: im.MediaIdentifier, State: state, Tries: tries, Error: why}); err != nil {
				t.Fatalf("%s -> %s: %v", im.ID, state, err)
			}
		}
		set(ia, session.PhotoRefused, 0, "ALEX refused this photo (422)")
		set(ib, session.PhotoNeedsChecking, 0, "no NHI")
		if _, _, err := st.RecordPhoto(ctx, "u1", session.PhotoUpdate{CommitID: "c1", ImageID: "b", Identifier: ib.MediaIdentifier, State: session.PhotoPending, Tries: 3}); !errors.Is(err, session.ErrStale) {
			t.Fatalf("stale tries: %v", err)
		}
		if s, err := st.StopCommit(ctx, "u1", ""); err != nil || s.Commit.Message != "Stopped waiting for ALEX. No photo reached the patient record; all 2 photos are kept here to commit later." {
			t.Fatalf("stop with nothing in the record: %v %q", err, s.Commit.Message)
		}
		if _, err := st.BeginCommit(ctx, "u1", "", "c2", "a"); !errors.Is(err, session.ErrNotResendable) {
			t.Fatalf("resend a refused photo: %v", err)
		}
		if _, err := st.BeginCommit(ctx, "u1", "", "c2", "zz"); !errors.Is(err, session.ErrImageNotFound) {
			t.Fatalf("resend an unknown photo: %v", err)
		}
		s, err := st.BeginCommit(ctx, "u1", "", "c2", "b")
		if err != nil {
			t.Fatal(err)
		}
		a2, b2 := s.Images[0], s.Images[1]
		if a2.State() != session.PhotoPending || a2.Error != "" || a2.MediaIdentifier != ia.MediaIdentifier {
			t.Errorf("refused photo after begin: %+v", a2)
		}
		if b2.State() != session.PhotoPending || b2.MediaIdentifier == ib.MediaIdentifier || b2.Tries != 0 || len(b2.SentHashes) != 0 {
			t.Errorf("resent photo: %+v", b2)
		}
	})
}

func ptr(s string) *string { return &s }

func lastEvent(t *testing.T, rdb redis.Cmdable, st *session.Store) (events.Event, session.CommitEvent) {
	t.Helper()
	msgs, err := rdb.XRevRangeN(context.Background(), st.Keys.Outbox(), "+", "-", 1).Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("outbox: %v", err)
	}
	ev, err := events.Decode([]byte(msgs[0].Values["event"].(string)))
	if err != nil {
		t.Fatal(err)
	}
	var data session.CommitEvent
	if err := ev.DataAs(&data); err != nil {
		t.Fatal(err)
	}
	return ev, data
}

// Promise 6: a new QR code revokes the earlier unredeemed one (for the same
// session or the next patient's), phones are listed, capped and removable,
// and each refusal changes nothing.
func TestQRCodesAndPhones(t *testing.T) {
	eachBackend(t, func(t *testing.T, _ *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		st := session.NewStore(rdb, session.Options{Prefix: "qr-" + testenv.ID() + ":", MaxPhones: 2})
		begin := func(patient, token string, discard bool) session.Started {
			t.Helper()
			out, err := st.Start(ctx, session.StartParams{UserID: "u1", PatientID: patient, EncounterID: "e1", Token: token, SessionID: "s-" + testenv.ID(), Discard: discard})
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			return out
		}
		first := begin("p1", "tok-a", false)
		begin("p1", "tok-b", false) // "New QR code" for the same patient
		snapshot := func() string {
			s, _ := st.Peek(ctx, "u1")
			s.LastActivity = time.Time{}
			b, _ := json.Marshal(s)
			return string(b)
		}
		before := snapshot()
		if _, err := st.Pair(ctx, "tok-a", "cred-a", "old code"); !errors.Is(err, session.ErrTokenRevoked) {
			t.Fatalf("old QR code: %v", err)
		}
		if before != snapshot() {
			t.Fatal("a revoked code changed the session")
		}
		if _, err := st.Credential(ctx, "cred-a"); !errors.Is(err, session.ErrTokenNotFound) {
			t.Fatalf("revoked code stored a credential: %v", err)
		}
		if _, err := st.Pair(ctx, "tok-b", "cred-1", "phone one"); err != nil {
			t.Fatal(err)
		}
		begin("p1", "tok-c", false)
		if _, err := st.Pair(ctx, "tok-c", "cred-2", "phone two"); err != nil {
			t.Fatal(err)
		}
		begin("p1", "tok-d", false)
		before = snapshot()
		if _, err := st.Pair(ctx, "tok-d", "cred-3", "phone three"); !errors.Is(err, session.ErrPhoneLimit) {
			t.Fatalf("third phone: %v", err)
		}
		if before != snapshot() {
			t.Fatal("a refused third phone changed the session")
		}
		s, _ := st.Peek(ctx, "u1")
		ph1, ph2, ph3 := session.PhoneID("cred-1"), session.PhoneID("cred-2"), session.PhoneID("cred-3")
		var ids []string
		for _, p := range s.Phones {
			ids = append(ids, p.ID+" "+p.UserAgent)
		}
		if d := cmp.Diff([]string{ph1 + " phone one", ph2 + " phone two"}, ids); d != "" || s.Phone == nil || s.Phone.ID != ph2 || s.SessionID != first.Session.SessionID {
			t.Fatalf("phones (-want +got):\n%s\nlast %+v", d, s.Phone)
		}
		if _, err := st.RemovePhone(ctx, "u1", "", "nope"); !errors.Is(err, session.ErrPhoneNotFound) {
			t.Fatalf("remove unknown phone: %v", err)
		}
		if _, err := st.RemovePhone(ctx, "u1", "another-session", ph1); !errors.Is(err, session.ErrSessionChanged) {
			t.Fatalf("remove in another session: %v", err)
		}
		s, err := st.RemovePhone(ctx, "u1", "", ph2)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Phones) != 1 || s.Phone == nil || s.Phone.ID != ph1 {
			t.Fatalf("after removing ph2: %+v %+v", s.Phones, s.Phone)
		}
		// The add script checks the pairing itself (the API asks nothing
		// else first): a removed phone records nothing, a paired one does.
		before = snapshot()
		img := session.Image{ID: "from-phone", S3Key: "temp/u1/p.jpg", ContentType: "image/jpeg"}
		if _, _, err := st.AddImageBound(ctx, "u1", session.Binding{SessionID: s.SessionID, PhoneID: ph2}, img); !errors.Is(err, session.ErrPhoneRemoved) {
			t.Fatalf("add from a removed phone: %v", err)
		}
		if before != snapshot() {
			t.Fatal("a removed phone changed the session")
		}
		if _, added, err := st.AddImageBound(ctx, "u1", session.Binding{SessionID: s.SessionID, PhoneID: ph1}, img); err != nil || !added {
			t.Fatalf("add from a paired phone: %v %v", added, err)
		}
		if _, _, err := st.RemoveImage(ctx, "u1", "", "from-phone"); err != nil {
			t.Fatal(err)
		}
		// The slot is free again: the latest code pairs.
		if _, err := st.Pair(ctx, "tok-d", "cred-3", "phone three"); err != nil {
			t.Fatalf("pair after a removal: %v", err)
		}
		st.RemovePhone(ctx, "u1", "", ph1)
		s, _ = st.RemovePhone(ctx, "u1", "", ph3)
		if b, _ := json.Marshal(s); len(s.Phones) != 0 || s.Phone != nil || !strings.Contains(string(b), `"phones":[]`) {
			t.Fatalf("no phones left: %s", b)
		}
		// The next patient's code revokes this one's.
		begin("p1", "tok-e", false)
		next := begin("p2", "tok-f", true)
		if _, err := st.Pair(ctx, "tok-e", "cred-e", "late"); !errors.Is(err, session.ErrTokenRevoked) {
			t.Fatalf("previous patient's code: %v", err)
		}
		msgs, _ := rdb.XRange(ctx, st.Keys.Outbox(), "-", "+").Result()
		ev, _ := events.Decode([]byte(msgs[len(msgs)-1].Values["event"].(string)))
		var data session.SessionEvent
		if err := ev.DataAs(&data); err != nil || ev.Type != events.SessionStarted || data.PreviousSessionID != first.Session.SessionID || data.SessionID != next.Session.SessionID {
			t.Fatalf("session.started names the session it replaced: %+v %v", data, err)
		}
	})
}

// While the desktop says another patient is open, nothing is added to the
// session, from a phone either; the session's own patient lifts the hold.
func TestOpenPatientHoldsTheSession(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		sid := start(t, st, "u1", "p1").Session.SessionID
		steps := []struct {
			open    string
			changed bool
			held    bool
		}{
			{"p1", false, false}, // the session's own patient: nothing to hold
			{"p2", true, true},
			{"p2", false, true},
			{"p3", true, true},
			{"p1", true, false},
		}
		for i, s := range steps {
			before := outboxLen(t, rdb, st)
			got, changed, err := st.SetOpenPatient(ctx, "u1", s.open)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			if changed != s.changed || (got.OpenPatientID != "") != s.held || got.Held != s.held || (outboxLen(t, rdb, st)-before == 1) != s.changed {
				t.Fatalf("step %d (%s open): changed=%v openPatientId=%q", i, s.open, changed, got.OpenPatientID)
			}
			_, added, err := st.AddImage(ctx, "u1", sid, image(fmt.Sprintf("img%d", i)))
			if s.held != errors.Is(err, session.ErrPatientMismatch) || (err == nil) != added {
				t.Fatalf("step %d (%s open): phone add: added=%v err=%v", i, s.open, added, err)
			}
		}
	})
}

// The session is stored per photo under the seeds' key: a hash whose field
// "session" holds the session's own fields and "image:<id>" each photo. A
// session an earlier version stored whole (a string) still reads, and its
// next change stores it per photo, keeping its TTL, order and photos.
func TestStoredPerPhoto(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		key := st.Keys.User("u1")
		old := session.Session{SessionID: "s-old", UserID: "u1", PatientID: "p1", EncounterID: "e1", CommitStatus: session.CommitNone,
			Images: session.List[session.Image]{image("b"), image("a")}, Version: 7}
		raw, _ := json.Marshal(old)
		if err := rdb.Set(ctx, key, raw, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		ids := func(s session.Session) []string {
			var out []string
			for _, im := range s.Images {
				out = append(out, im.ID)
			}
			return out
		}
		got, err := st.Peek(ctx, "u1")
		if err != nil || !slices.Equal(ids(got), []string{"b", "a"}) || got.Version != 7 {
			t.Fatalf("whole session read: %v %v v%d", ids(got), err, got.Version)
		}
		sess, added, err := st.AddImageBound(ctx, "u1", session.Binding{SessionID: "s-old"}, image("c"))
		if err != nil || !added || !slices.Equal(ids(sess), []string{"b", "a", "c"}) {
			t.Fatalf("add to a whole session: %v %v %v", ids(sess), added, err)
		}
		if typ, _ := rdb.Type(ctx, key).Result(); typ != "hash" {
			t.Fatalf("stored as %s after a change, want hash", typ)
		}
		fields, _ := rdb.HKeys(ctx, key).Result()
		slices.Sort(fields)
		if want := []string{"image:a", "image:b", "image:c", "session"}; !slices.Equal(fields, want) {
			t.Fatalf("fields %v, want %v", fields, want)
		}
		if ttl, _ := rdb.TTL(ctx, key).Result(); ttl <= 0 {
			t.Fatalf("TTL %v after the change", ttl)
		}
		// Photos keep their order through edits and removals, and a
		// removed photo's field goes.
		if _, _, err := st.RemoveImage(ctx, "u1", "", "a"); err != nil {
			t.Fatal(err)
		}
		if _, added, err := st.AddImage(ctx, "u1", "", image("d")); err != nil || !added {
			t.Fatal(err)
		}
		if _, added, err := st.AddImage(ctx, "u1", "", image("b")); err != nil || added {
			t.Fatalf("the same photo again: added %v %v", added, err)
		}
		got, err = st.Get(ctx, "u1")
		if err != nil || !slices.Equal(ids(got), []string{"b", "c", "d"}) {
			t.Fatalf("after remove and add: %v %v", ids(got), err)
		}
		if ok, _ := rdb.HExists(ctx, key, "image:a").Result(); ok {
			t.Fatal("a removed photo's field is still stored")
		}
		// A new patient's session replaces every photo field.
		if _, err := st.Start(ctx, session.StartParams{UserID: "u1", PatientID: "p2", EncounterID: "e2", Token: "tok-" + testenv.ID(), SessionID: "s-new", Discard: true}); err != nil {
			t.Fatal(err)
		}
		if fields, _ := rdb.HKeys(ctx, key).Result(); !slices.Equal(fields, []string{"session"}) {
			t.Fatalf("fields after a new session: %v", fields)
		}
	})
}

// Objects the server writes for a session (earlier photos' previews) are
// handed to the sweep with the session's keys once it has ended.
func TestTrackedObjectsAreSwept(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		s := start(t, st, "u1", "p1").Session
		keys := []string{"temp/u1/earlier/" + s.SessionID + "/a.jpg", "temp/u1/earlier/" + s.SessionID + "/b.jpg"}
		if err := st.TrackObjects(ctx, "u1", s.SessionID, keys...); err != nil {
			t.Fatal(err)
		}
		if err := rdb.Del(ctx, st.Keys.User("u1")).Err(); err != nil { // the session expires
			t.Fatal(err)
		}
		later := session.NewStore(rdb, session.Options{Prefix: string(st.Keys), Now: func() time.Time { return time.Now().Add(3 * time.Hour) }})
		ended, ok, err := later.DueForSweep(ctx, "t1", time.Minute, 10)
		if err != nil || !ok || len(ended) != 1 || ended[0].SessionID != s.SessionID {
			t.Fatalf("ended session: %+v %v %v", ended, ok, err)
		}
		got := append([]string(nil), ended[0].Keys...)
		slices.Sort(got)
		if diff := cmp.Diff(keys, got); diff != "" {
			t.Errorf("swept keys (-want +got):\n%s", diff)
		}
	})
}
