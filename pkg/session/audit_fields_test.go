package session_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// The audit trail's facts on the events: image.updated names the fields
// that really changed (never their values), and every event says who made
// the change when the caller's context does.
func TestUpdateEventNamesChangedFieldsAndActor(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *session.Store, rdb redis.Cmdable) {
		ctx := context.Background()
		start(t, st, "u1", "p1")
		im := image("a")
		im.Metadata = session.Metadata{BodySite: "368208006", Laterality: "left"}
		if _, _, err := st.AddImage(ctx, "u1", "", im); err != nil {
			t.Fatal(err)
		}
		phone := session.WithActor(ctx, session.ActorPhone)
		cases := []struct {
			name  string
			ctx   context.Context
			patch session.MetadataPatch
			want  []string
			by    session.Actor
		}{
			{"same values", ctx, session.MetadataPatch{BodySite: ptr("368208006"), Laterality: ptr("left")}, nil, ""},
			{"body site and a note", phone, session.MetadataPatch{BodySite: ptr("14975008"), Laterality: ptr("left"), Notes: ptr("secret words")}, []string{"bodySite", "notes"}, session.ActorPhone},
			{"note cleared", session.WithActor(ctx, session.ActorDesktop), session.MetadataPatch{Notes: ptr("")}, []string{"notes"}, session.ActorDesktop},
		}
		for _, c := range cases {
			if _, err := st.UpdateMetadata(c.ctx, "u1", "", "a", c.patch); err != nil {
				t.Fatal(err)
			}
			ev, _ := lastEvent(t, rdb, st)
			var data session.ImageEvent
			if err := ev.DataAs(&data); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, []string(data.Fields)); len(c.want)+len(data.Fields) > 0 && diff != "" {
				t.Errorf("%s: fields (-want +got):\n%s", c.name, diff)
			}
			if data.By != c.by {
				t.Errorf("%s: by %q, want %q", c.name, data.By, c.by)
			}
		}
	})
}
