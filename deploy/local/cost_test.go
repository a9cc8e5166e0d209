package local

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/testenv"
)

// commands is how many commands Redis has run since the last CONFIG
// RESETSTAT, by command, less the test's own INFO and CONFIG.
func commands(t *testing.T, rdb *redis.Client) (int, map[string]int) {
	t.Helper()
	raw, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	total, by := 0, map[string]int{}
	for _, line := range strings.Split(raw, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		if name == "info" || strings.HasPrefix(name, "config") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		n, err := strconv.Atoi(calls)
		if err != nil {
			t.Fatalf("commandstats line %q", line)
		}
		by[name] += n
		total += n
	}
	return total, by
}

func resetStats(t *testing.T, rdb *redis.Client) {
	t.Helper()
	if err := rdb.ConfigResetStat(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

// TestRedisCommandCost counts what Upstash bills (commands) on a Redis of
// its own: the whole stack idle for a while, then photos taken, recorded,
// processed and committed through the API. It prints the figures
// docs/deploy.md quotes, and fails if idle costs more than the outbox
// publishers' reads, claims and the committer's sweep allow.
func TestRedisCommandCost(t *testing.T) {
	rdb, _ := testenv.RedisProcess(t)
	st := newClinic(t, nil, func(o *Options) { o.RedisURL = "redis://" + rdb.Options().Addr + "/0" }).st
	// Let every service finish starting (first claims, consumer set-up).
	desk, phone := pairPhone(t, st, "user_cost", "12345", "enc_1")
	time.Sleep(3 * time.Second)

	// Idle: nobody uses it.
	const idleFor = 61 * time.Second // a minute: every claim and sweep once
	resetStats(t, rdb)
	began := time.Now()
	time.Sleep(idleFor)
	idle, idleBy := commands(t, rdb)
	elapsed := time.Since(began)
	perHour := float64(idle) * float64(time.Hour) / float64(elapsed)
	// Three publishers (api, committer, thumbnailer): one blocking read per
	// 5 s and one claim per 30 s each; the committer's sweep once a
	// minute (a script and the ZRANGEBYSCORE it runs, which commandstats
	// counts too); the API's expired-session sweep every 30 s (its script
	// takes the lock and reads the expiry index, a second script releases
	// the lock: six commands as commandstats counts them). A blocked read
	// that times out counts once. The first sweep loads its script and a
	// pool may open a connection (HELLO): a quarter's room for those.
	const publishers = 3
	bound := publishers*(3600/5+3600/30) + 2*60 + 6*3600/30
	t.Logf("idle: %d commands in %s = %.0f an hour (%v); bound %d an hour", idle, elapsed.Round(time.Second), perHour, idleBy, bound)
	if perHour > float64(bound)*1.25 {
		t.Errorf("idle stack: %.0f commands an hour, want at most %d", perHour, bound)
	}

	// Photos: presign, upload, record, previews, then one commit of them all.
	const photos = 5
	photo := testdata(t, "photo-1920.jpg")
	resetStats(t, rdb)
	began = time.Now()
	for range photos {
		upload(t, st, "user_cost", phone, photo, "368208006")
	}
	if code, res := call(t, "PUT", st.URL+"/api/users/user_cost/consent", desk, map[string]any{"method": "written", "purposes": []string{"record"}}); code != 200 {
		t.Fatalf("consent: %d %v", code, res)
	}
	if code, res := call(t, "POST", st.URL+"/api/users/user_cost/commit", desk, nil); code != 200 || res["success"] != true {
		t.Fatalf("commit: %d %v", code, res)
	}
	busy, busyBy := commands(t, rdb)
	took := time.Since(began)
	idleShare := perHour * took.Hours()
	per := (float64(busy) - idleShare) / photos
	t.Logf("photos: %d commands for %d photos in %s (%v); less idle's %.0f: %.1f commands a photo, its share of the commit included",
		busy, photos, took.Round(time.Second), busyBy, idleShare, per)
	if per <= 0 || per > 300 {
		t.Errorf("%.1f commands a photo: want a positive count below 300", per)
	}
}
