package session_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// BenchmarkAdd measures recording one photo (AddImage: the add script
// with its outbox append) into a session that holds 0 photos (the
// reference) and 49, on a redis-server of the benchmark's own, so its
// command statistics are this benchmark's alone: redis-us/add is the time
// inside Redis of every command an add sends (INFO commandstats: the
// script and any read after it), x-empty the ratio to the empty session's
// figure measured just before. 200 sessions at a time, one
// add each, then the photos (and their tombstones) are removed again
// untimed.
//
//	go test -run '^$' -bench Add ./pkg/session
func BenchmarkAdd(b *testing.B) {
	rdb, _ := testenv.RedisProcess(b)
	ctx := context.Background()
	st := session.NewStore(rdb, session.Options{Prefix: "bench:", MaxImages: 50})
	const sessions = 200
	var empty float64
	for _, held := range []int{0, 49} {
		b.Run(fmt.Sprintf("holding=%d", held), func(b *testing.B) {
			users := make([]string, sessions)
			for i := range users {
				users[i] = fmt.Sprintf("u%d_%d", held, i)
				if _, err := st.Start(ctx, session.StartParams{UserID: users[i], PatientID: "p", EncounterID: "e",
					Token: "t" + testenv.ID(), SessionID: "s" + testenv.ID(), Discard: true}); err != nil {
					b.Fatal(err)
				}
				for k := range held {
					add(b, st, users[i], fmt.Sprintf("held%d", k))
				}
			}
			var redisUS, calls float64
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(sessions, b.N-done)
				us0 := redisTime(b, rdb)
				for i := range n {
					add(b, st, users[i], "new")
				}
				redisUS += redisTime(b, rdb) - us0
				calls += float64(n)
				b.StopTimer()
				for i := range n {
					if _, _, err := st.RemoveImage(ctx, users[i], "", "new"); err != nil {
						b.Fatal(err)
					}
					// and its tombstone, so that "new" can be recorded again
					// into a session as it was
					if err := rdb.HDel(ctx, st.Keys.User(users[i]), "deleted:new").Err(); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				done += n
			}
			b.StopTimer()
			per := redisUS / calls
			b.ReportMetric(per, "redis-us/add")
			if held == 0 {
				empty = per
			} else if empty > 0 {
				b.ReportMetric(per/empty, "x-empty")
			}
		})
	}
}

func add(b *testing.B, st *session.Store, user, id string) {
	img := session.Image{ID: id, S3Key: "temp/" + user + "/" + id + ".jpg", Uploaded: true, Source: "mobile",
		ContentType: "image/jpeg", Size: 1843200, CapturedAt: time.Now().UTC(),
		Metadata: session.Metadata{BodySite: "368208006", BodySiteDisplay: "Left upper arm structure", Laterality: "left", Notes: "Lesion, 4 mm, since March"}}
	if _, _, err := st.AddImage(context.Background(), user, "", img); err != nil {
		b.Fatal(err)
	}
}

// redisTime is the microseconds Redis has spent in commands, all of them.
func redisTime(b *testing.B, rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var us float64
	for _, l := range strings.Split(info, "\n") {
		_, fields, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok || !strings.HasPrefix(l, "cmdstat_") || strings.HasPrefix(l, "cmdstat_info:") {
			continue
		}
		for _, f := range strings.Split(fields, ",") {
			if v, ok := strings.CutPrefix(f, "usec="); ok {
				x, _ := strconv.ParseFloat(v, 64)
				us += x
			}
		}
	}
	return us
}
