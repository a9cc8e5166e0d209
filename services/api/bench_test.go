package api

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/pkg/session"
)

const benchClients = 200

// BenchmarkRecordImage measures POST /api/users/:userId/images through the
// whole API (auth, decode, S3 HEAD and magic-byte read, the Lua step with
// its outbox append) under 200 concurrent clients on loopback, next to the
// raw rate of the same Lua step called directly in the same run.
//
//	go test -run '^$' -bench RecordImage ./services/api
func BenchmarkRecordImage(b *testing.B) {
	h := newBenchHarness(b)
	ctx := context.Background()

	// Each client is its own user with one session and one uploaded photo.
	type client struct{ user, phone, key string }
	clients := make([]client, benchClients)
	for i := range clients {
		u := fmt.Sprintf("bench%d", i)
		p := h.start(u, "p1")
		k, _ := h.upload(u, p, jpegBytes)
		clients[i] = client{u, p, k}
	}

	b.Run("api", func(b *testing.B) {
		var next atomic.Int64
		lat := make([][]time.Duration, benchClients)
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for i, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					n := next.Add(1)
					if n > int64(b.N) {
						return
					}
					body := fmt.Sprintf(`{"imageId":"i%d","s3Key":%q,"source":"mobile"}`, n, c.key)
					req, _ := http.NewRequest("POST", h.srv.URL+"/api/users/"+c.user+"/images", bytes.NewBufferString(body))
					req.Header.Set("Authorization", "Bearer "+c.phone)
					req.Header.Set("Content-Type", "application/json")
					t0 := time.Now()
					resp, err := benchHTTP.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					resp.Body.Close()
					lat[i] = append(lat[i], time.Since(t0))
					if resp.StatusCode != 200 {
						b.Errorf("record: %d", resp.StatusCode)
						return
					}
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.StopTimer()
		all := slices.Concat(lat...)
		slices.Sort(all)
		if len(all) > 0 {
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "records/s")
			b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
		}
	})

	b.Run("redis-script", func(b *testing.B) {
		var next atomic.Int64
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					n := next.Add(1)
					if n > int64(b.N) {
						return
					}
					img := session.Image{ID: fmt.Sprintf("r%d", n), S3Key: c.key, ContentType: "image/jpeg", Size: 1}
					if _, _, err := h.store.AddImage(ctx, c.user, "", img); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
	})
}

var benchHTTP = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchClients, MaxConnsPerHost: benchClients}}

// newBenchHarness is the test harness with a cap high enough for a
// benchmark's worth of records per session.
func newBenchHarness(b *testing.B) *harness {
	return newHarnessTB(b, func(c *Config) { c.MaxImages = 500; c.MaxImageBytes = 10 << 20 })
}
