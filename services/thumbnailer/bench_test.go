package thumbnailer

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/davidbyttow/govips/v2/vips"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/thumbnailer/internal/phototest"
)

// directThumbnail is the reference the issue names: one govips thumbnail
// call of the same photo to the grid size, exported as JPEG.
func directThumbnail(b *testing.B, src []byte) {
	img, err := vips.LoadThumbnailFromBuffer(src, 320, 320, vips.InterestingNone, vips.SizeDown, vips.NewImportParams())
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	if _, _, err := img.ExportJpeg(&vips.JpegExportParams{Quality: 80, StripMetadata: true, OptimizeCoding: true}); err != nil {
		b.Fatal(err)
	}
}

// batch uploads n photos as the API would record them, 40 to a user's
// session (the cap is 50), and returns their image.uploaded events.
func (h *harness) batch(b *testing.B, src []byte, n int) []events.Event {
	evs := make([]events.Event, 0, n)
	for i := 0; i < n; i++ {
		if i > 0 && i%40 == 0 {
			h.userID, h.sessionID = "user_"+testenv.ID(), testenv.ID()
			if _, err := h.store.Start(context.Background(), session.StartParams{UserID: h.userID, PatientID: "p", EncounterID: "e",
				Token: testenv.ID(), SessionID: h.sessionID}); err != nil {
				b.Fatal(err)
			}
		}
		evs = append(evs, h.upload(src))
	}
	return evs
}

// BenchmarkPhotoPath is the whole per-photo path on the test servers: read
// from S3, check, make previews and clean copy, write three objects to S3,
// record the result in Redis (with its outbox event). Each photo is timed
// next to a direct govips grid thumbnail of the same photo in the same loop
// (ratio = path / direct). path-2-workers runs the path on two goroutines,
// as THUMBNAIL_WORKERS=2 does on a 2-core machine: photos per second.
// Peak RSS includes the in-process S3 server, which holds every object.
func BenchmarkPhotoPath(b *testing.B) {
	for _, p := range []struct{ name, file string }{
		{"1920px", "photo-1920.jpg"},
		{"12MP-orient6", "photo-12mp-orient6.jpg"},
	} {
		src := hygienetest.Shared(b, p.file)
		b.Run(p.name+"/path", func(b *testing.B) {
			h := newHarness(b, ProcessorOptions{})
			evs := h.batch(b, src, b.N+1)
			if err := h.proc.Handle(context.Background(), evs[b.N]); err != nil { // warm up
				b.Fatal(err)
			}
			directThumbnail(b, src)
			phototest.ResetPeakRSS()
			b.ReportAllocs()
			b.ResetTimer()
			var tPath, tDirect time.Duration
			for i := 0; i < b.N; i++ {
				t := time.Now()
				if err := h.proc.Handle(context.Background(), evs[i]); err != nil {
					b.Fatal(err)
				}
				tPath += time.Since(t)
				t = time.Now()
				directThumbnail(b, src)
				tDirect += time.Since(t)
			}
			n := float64(b.N)
			b.ReportMetric(float64(tPath.Nanoseconds())/n, "ns/op")
			b.ReportMetric(float64(tPath.Microseconds())/1000/n, "ms/photo")
			b.ReportMetric(float64(tDirect.Microseconds())/1000/n, "direct-thumb-ms/photo")
			b.ReportMetric(float64(tPath)/float64(tDirect), "ratio")
			b.ReportMetric(phototest.PeakRSS(), "peak-RSS-MB")
			if ready := int(testutil.ToFloat64(h.proc.m.made)); ready != b.N+1 {
				b.Fatalf("%d photos ready, want %d", ready, b.N+1)
			}
		})
		b.Run(p.name+"/path-2-workers", func(b *testing.B) {
			h := newHarness(b, ProcessorOptions{})
			evs := h.batch(b, src, b.N)
			phototest.ResetPeakRSS()
			b.ReportAllocs()
			b.ResetTimer()
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
						if err := h.proc.Handle(context.Background(), evs[i]); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			el := b.Elapsed()
			b.ReportMetric(float64(b.N)/el.Seconds(), "photos/s")
			b.ReportMetric(float64(el.Microseconds())/1000/float64(b.N), "ms/photo")
			b.ReportMetric(phototest.PeakRSS(), "peak-RSS-MB")
			if ready := int(testutil.ToFloat64(h.proc.m.made)); ready != b.N {
				b.Fatalf("%d photos ready, want %d", ready, b.N)
			}
		})
	}
}
