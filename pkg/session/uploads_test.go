package session_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// Recording a photo bound to its session ends its upload's count against
// the session's outstanding uploads in the same step, whether the photo is
// added or was there already; a refused record leaves it counted, and so
// does a record that names no session (its caller calls UploadRecorded).
func TestBoundRecordEndsTheUploadsCount(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		st = session.NewStore(rdb, session.Options{Prefix: st.Options().Prefix, MaxUploads: 1})
		sid := start(t, st, "u1", "p1").Session.SessionID
		later := time.Now().Add(time.Hour)
		track := func(key string) error { return st.TrackUpload(ctx, "u1", sid, key, later) }
		a, b := image("a"), image("b")
		if err := track(a.S3Key); err != nil {
			t.Fatal(err)
		}
		if err := track("temp/u1/other.jpg"); !errors.Is(err, session.ErrUploadLimit) {
			t.Fatalf("second upload with one outstanding: got %v, want ErrUploadLimit", err)
		}
		if _, _, err := st.AddImageBound(ctx, "u1", session.Binding{SessionID: sid, PatientID: "p2"}, a); !errors.Is(err, session.ErrPatientMismatch) {
			t.Fatalf("record for another patient: got %v, want ErrPatientMismatch", err)
		}
		if err := track("temp/u1/other.jpg"); !errors.Is(err, session.ErrUploadLimit) {
			t.Fatalf("after a refused record: got %v, want ErrUploadLimit", err)
		}
		if _, added, err := st.AddImageBound(ctx, "u1", session.Binding{SessionID: sid}, a); err != nil || !added {
			t.Fatalf("record: added %v, %v", added, err)
		}
		if err := track(b.S3Key); err != nil {
			t.Fatalf("after the record: %v", err)
		}
		if _, _, err := st.AddImage(ctx, "u1", "", b); err != nil {
			t.Fatal(err)
		}
		if err := track("temp/u1/other.jpg"); !errors.Is(err, session.ErrUploadLimit) {
			t.Fatalf("after a record naming no session: got %v, want ErrUploadLimit", err)
		}
		if _, added, err := st.AddImageBound(ctx, "u1", session.Binding{SessionID: sid}, b); err != nil || added {
			t.Fatalf("record again: added %v, %v", added, err)
		}
		if err := track("temp/u1/other.jpg"); err != nil {
			t.Fatalf("after recording the same photo again: %v", err)
		}
	})
}
