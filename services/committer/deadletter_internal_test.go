package committer

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/clinicalimages/clinimg/pkg/alexsim"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/pkg/testenv"
)

// After the last delivery fails, the work item goes to the dead-letter
// subject, what the commit wrote is withdrawn, and the session is told.
func TestDeadLetter(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	_, nc, js := testenv.JetStream(t)
	photos, _ := testenv.S3(t)
	sim := alexsim.New(alexsim.Options{Capabilities: fhir.Capabilities{Delete: true}})
	ts := httptest.NewServer(sim)
	t.Cleanup(ts.Close)
	env := sim.Env(ts.URL)
	alex, err := fhir.NewClient(fhir.Config{BaseURL: env["ALEX_API_URL"], TokenURL: env["ALEX_OAUTH_TOKEN_URL"],
		ClientID: env["ALEX_CLIENT_ID"], ClientSecret: env["ALEX_CLIENT_SECRET"], Scope: env["ALEX_SCOPE"], FacilityID: env["ALEX_FACILITY_ID"]})
	if err != nil {
		t.Fatal(err)
	}
	store := session.NewStore(rdb, session.Options{Prefix: prefix})
	log, _ := testenv.Logger(t)
	reg := prometheus.NewRegistry()
	w := &worker{cfg: Config{Capabilities: fhir.Capabilities{Delete: true}, IdentifierSystem: fhir.DefaultImageIDNS, Parallelism: 2, LockTTL: 3 * time.Second},
		store: store, rdb: rdb, photos: photos, alex: alex, js: js, nc: nc, names: events.DefaultNames, log: log, m: newMetrics(reg)}

	userID := "u" + testenv.ID()
	st, err := store.Start(ctx, session.StartParams{UserID: userID, PatientID: "p1", EncounterID: "e1", Token: testenv.ID(), SessionID: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if _, _, err := store.AddImage(ctx, userID, st.Session.SessionID, session.Image{ID: id, S3Key: "temp/" + userID + "/" + id + ".jpg"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := store.BeginCommit(ctx, userID, "s1", "c1"); err != nil {
		t.Fatal(err)
	}
	// Two photos landed before ALEX started failing for good.
	for _, id := range []string{"a", "b"} {
		src := func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(bytes.NewReader([]byte("jpeg"))), 4, nil
		}
		c, err := alex.CreateMedia(ctx, fhir.NewMedia(fhir.Photo{ImageID: id, PatientID: "p1", ContentType: "image/jpeg"}), src, "")
		if err != nil {
			t.Fatal(err)
		}
		rdb.HSet(ctx, store.Keys.Ledger(userID, "c1"), id, c.ID)
	}
	sub, err := nc.SubscribeSync(events.DefaultNames.DeadLetterSubject(events.ConsumerCommitter))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.New("/test", events.CommitRequested, userID, session.CommitEvent{SessionID: "s1", CommitID: "c1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.deadLetter(ctx, ev, "alex create: 503"); err != nil {
		t.Fatal(err)
	}

	msg, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	got, err := events.Decode(msg.Data)
	if err != nil || got.ID != ev.ID || msg.Header.Get("Clinimg-Reason") != "alex create: 503" {
		t.Errorf("dead letter %s reason %q: %v", got.ID, msg.Header.Get("Clinimg-Reason"), err)
	}
	sess, err := store.Peek(ctx, userID)
	if err != nil {
		t.Fatal(err)
	}
	if sess.CommitStatus != session.CommitNone || !strings.Contains(sess.Commit.Message, "Nothing was saved") {
		t.Errorf("session %s, message %q", sess.CommitStatus, sess.Commit.Message)
	}
	if n := sim.Live(); n != 0 {
		t.Errorf("%d Media left live", n)
	}
	if n, _ := rdb.Exists(ctx, store.Keys.Ledger(userID, "c1")).Result(); n != 0 {
		t.Error("ledger kept after the commit failed")
	}
	if v := testutil.ToFloat64(w.m.commits.WithLabelValues("dead_lettered")); v != 1 {
		t.Errorf("dead_lettered = %v", v)
	}
}
