package session_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// TrackObjects keeps every key it is given for the sweep, and only for
// the user's current session.
func TestTrackObjects(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		sid := start(t, st, "u1", "p1").Session.SessionID
		keys := []string{"temp/u1/earlier-1.jpg", "temp/u1/earlier-2.jpg"}
		if err := st.TrackObjects(ctx, "u1", sid, keys...); err != nil {
			t.Fatal(err)
		}
		got, err := rdb.SMembers(ctx, st.Keys.Objects("u1", sid)).Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if !slices.Equal(got, keys) {
			t.Errorf("tracked %v, want %v", got, keys)
		}
		for _, tc := range []struct {
			name, user, session string
			want                error
		}{
			{"another session", "u1", "s-other", session.ErrSessionChanged},
			{"no session", "u2", sid, session.ErrNotFound},
		} {
			if err := st.TrackObjects(ctx, tc.user, tc.session, "temp/x.jpg"); !errors.Is(err, tc.want) {
				t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			}
		}
	})
}
