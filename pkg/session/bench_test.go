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
// with its outbox append, and the session read back for the answer in the
// same MULTI) into a session that holds 0 photos (the reference) and 49,
// on a redis-server of the benchmark's own, so its statistics are this
// benchmark's alone. Reported per add, each beside its ratio to the empty
// session's figure measured just before:
//
//   - script-us/add (x-empty): the add step alone, the script's own time
//     in Redis (INFO commandstats, EVALSHA: the commands it calls inside
//     included);
//   - redis-us/add (tx-x-empty): the whole transaction, the script and the
//     read-back of every photo the answer carries (EXEC, which includes
//     the commands queued in it; counting those again, as summing every
//     command's time would, counts each twice);
//   - redis-cpu-us/add: the Redis process's CPU (INFO cpu), its network
//     and event loop included.
//
// 200 sessions at a time, one add each, then the photos (and their
// tombstones) are removed again untimed.
//
//	go test -run '^$' -bench Add ./pkg/session
func BenchmarkAdd(b *testing.B) {
	rdb, _ := testenv.RedisProcess(b)
	ctx := context.Background()
	st := session.NewStore(rdb, session.Options{Prefix: "bench:", MaxImages: 50})
	const sessions = 200
	var empty redisStats
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
			var spent redisStats
			var calls float64
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(sessions, b.N-done)
				s0 := readStats(b, rdb)
				for i := range n {
					add(b, st, users[i], "new")
				}
				spent = spent.plus(readStats(b, rdb).minus(s0))
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
			per := spent.scale(1 / calls)
			b.ReportMetric(per.script, "script-us/add")
			b.ReportMetric(per.tx, "redis-us/add")
			b.ReportMetric(per.cpu, "redis-cpu-us/add")
			if held == 0 {
				empty = per
			} else if empty.script > 0 && empty.tx > 0 {
				b.ReportMetric(per.script/empty.script, "x-empty")
				b.ReportMetric(per.tx/empty.tx, "tx-x-empty")
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

// redisStats is time Redis has spent, in microseconds: in scripts
// (EVALSHA), in transactions (MULTI and EXEC, with what was queued in
// them) and the process's CPU.
type redisStats struct{ script, tx, cpu float64 }

func (a redisStats) plus(b redisStats) redisStats {
	return redisStats{a.script + b.script, a.tx + b.tx, a.cpu + b.cpu}
}
func (a redisStats) minus(b redisStats) redisStats {
	return redisStats{a.script - b.script, a.tx - b.tx, a.cpu - b.cpu}
}
func (a redisStats) scale(f float64) redisStats {
	return redisStats{a.script * f, a.tx * f, a.cpu * f}
}

// readStats reads Redis's counters now.
func readStats(b *testing.B, rdb *redis.Client) redisStats {
	info, err := rdb.Info(context.Background(), "commandstats", "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var st redisStats
	for _, l := range strings.Split(info, "\n") {
		name, fields, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok {
			continue
		}
		switch name {
		case "used_cpu_sys", "used_cpu_user":
			x, _ := strconv.ParseFloat(fields, 64)
			st.cpu += x * 1e6
		case "cmdstat_evalsha":
			st.script += usec(fields)
		case "cmdstat_multi", "cmdstat_exec":
			st.tx += usec(fields)
		}
	}
	return st
}

// usec is the usec= of a commandstats line's fields.
func usec(fields string) float64 {
	for _, f := range strings.Split(fields, ",") {
		if v, ok := strings.CutPrefix(f, "usec="); ok {
			x, _ := strconv.ParseFloat(v, 64)
			return x
		}
	}
	return 0
}
