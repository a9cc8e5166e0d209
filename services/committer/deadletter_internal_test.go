package committer

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// A work item that cannot be handled at all (stored on the dead-letter
// stream by package consume): its commit, if still running, fails with
// every photo's state kept: the one in the record stays in it.
func TestDeadLetter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	_, nc, js := testenv.JetStream(t)
	photos, _ := testenv.S3(t)
	store := session.NewStore(rdb, session.Options{Prefix: prefix})
	log, _ := testenv.Logger(t)
	w := &worker{cfg: Config{Parallelism: 2, LockTTL: 3 * time.Second}, store: store, rdb: rdb, photos: photos,
		js: js, nc: nc, names: events.DefaultNames, log: log, m: newMetrics(prometheus.NewRegistry())}
	w.init()

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
	sess, err := store.BeginCommit(ctx, userID, "s1", "c1")
	if err != nil {
		t.Fatal(err)
	}
	a := sess.Images[0]
	if _, _, err := store.RecordPhoto(ctx, userID, session.PhotoUpdate{CommitID: "c1", ImageID: a.ID, Identifier: a.MediaIdentifier, State: session.PhotoInRecord, MediaID: "m1"}); err != nil {
		t.Fatal(err)
	}
	ev, err := events.New("/test", events.CommitRequested, userID, session.CommitEvent{SessionID: "s1", CommitID: "c1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.deadLetter(ctx, ev, "delivery limit"); err != nil {
		t.Fatal(err)
	}
	after, err := store.Peek(ctx, userID)
	if err != nil {
		t.Fatal(err)
	}
	if after.CommitStatus != session.CommitNone || !strings.Contains(after.Commit.Message, "1 of 3 photos are in the patient record") ||
		after.Images[0].MediaID != "m1" || after.Images[0].State() != session.PhotoInRecord {
		t.Errorf("session %s, message %q, first photo %+v", after.CommitStatus, after.Commit.Message, after.Images[0])
	}
	if v := testutil.ToFloat64(w.m.commits.WithLabelValues("dead_lettered")); v != 1 {
		t.Errorf("dead_lettered = %v", v)
	}
}
