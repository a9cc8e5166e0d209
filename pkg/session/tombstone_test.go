package session_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// A photo deleted from a session is never recorded in it again: a phone
// that lost the answer to its record retries the same id late, and the
// photo must not reappear (and be committed).
func TestDeletedPhotoNeverComesBack(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		if _, _, err := st.AddImage(ctx, "u1", "", image("a")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.RemoveImage(ctx, "u1", "", "a"); err != nil {
			t.Fatal(err)
		}
		events := outboxLen(t, rdb, st)
		other := image("a")
		other.S3Key = "temp/u1/b.jpg"
		for _, tc := range []struct {
			name string
			img  session.Image
			want error
		}{
			{"the same photo", image("a"), session.ErrImageDeleted},
			{"another object under its id", other, session.ErrImageIDConflict},
		} {
			_, added, err := st.AddImage(ctx, "u1", "", tc.img)
			if !errors.Is(err, tc.want) || added {
				t.Errorf("%s: added %v, err %v; want %v", tc.name, added, err, tc.want)
			}
		}
		if got := outboxLen(t, rdb, st); got != events {
			t.Errorf("refused records wrote %d events", got-events)
		}
		key, deleted, err := st.Deleted(ctx, "u1", "a")
		if err != nil || !deleted || key != image("a").S3Key {
			t.Errorf("Deleted(a) = %q, %v, %v; want its key", key, deleted, err)
		}
		if _, deleted, _ := st.Deleted(ctx, "u1", "b"); deleted {
			t.Error("Deleted(b) for a photo never recorded")
		}
		// The same patient and encounter go on with the same session: the
		// tombstone stays. Another patient's session starts without it.
		start(t, st, "u1", "p1")
		if _, _, err := st.AddImage(ctx, "u1", "", image("a")); !errors.Is(err, session.ErrImageDeleted) {
			t.Errorf("record in the reused session: %v, want ErrImageDeleted", err)
		}
		start(t, st, "u1", "p2")
		if _, deleted, _ := st.Deleted(ctx, "u1", "a"); deleted {
			t.Error("a new session inherited the ended one's tombstone")
		}
		if _, added, err := st.AddImage(ctx, "u1", "", image("a")); err != nil || !added {
			t.Errorf("record in a new session: added %v, %v", added, err)
		}
	})
}

// A delete and a late record of the same photo race: whichever runs first,
// once the delete has returned the photo is gone and stays gone, and the
// record either found it already there (duplicate) or is refused.
func TestDeleteRacingALateRecord(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, _ redis.Cmdable) {
		ctx := context.Background()
		for round := range 100 {
			user := fmt.Sprintf("u%d", round)
			start(t, st, user, "p1")
			if _, _, err := st.AddImage(ctx, user, "", image("a")); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var addErr, delErr, afterErr error
			var added bool
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, added, addErr = st.AddImage(ctx, user, "", image("a"))
			}()
			go func() {
				defer wg.Done()
				if _, _, delErr = st.RemoveImage(ctx, user, "", "a"); delErr == nil {
					_, _, afterErr = st.AddImage(ctx, user, "", image("a"))
				}
			}()
			wg.Wait()
			if delErr != nil {
				t.Fatalf("round %d: delete: %v", round, delErr)
			}
			if added || (addErr != nil && !errors.Is(addErr, session.ErrImageDeleted)) {
				t.Fatalf("round %d: racing record: added %v, err %v; want a duplicate or ErrImageDeleted", round, added, addErr)
			}
			if !errors.Is(afterErr, session.ErrImageDeleted) {
				t.Fatalf("round %d: record after the delete returned: %v, want ErrImageDeleted", round, afterErr)
			}
			s, err := st.Get(ctx, user)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := s.Image("a"); ok {
				t.Fatalf("round %d: the deleted photo is in the session", round)
			}
		}
	})
}
