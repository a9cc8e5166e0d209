package preview_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/davidbyttow/govips/v2/vips"

	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
	"github.com/clinicalimages/clinimg/services/thumbnailer/internal/phototest"
	"github.com/clinicalimages/clinimg/services/thumbnailer/preview"
)

// benchPhotos are the two shapes of photo the service sees: what the phone
// page uploads after in-browser compression, and a camera original.
var benchPhotos = []struct{ name, file string }{
	{"1920px", "photo-1920.jpg"},
	{"12MP-orient6", "photo-12mp-orient6.jpg"},
}

// directThumbnail is the reference: one govips thumbnail call and a JPEG
// export with the same settings as ours, nothing else.
func directThumbnail(src []byte, size int) error {
	img, err := vips.LoadThumbnailFromBuffer(src, size, size, vips.InterestingNone, vips.SizeDown, vips.NewImportParams())
	if err != nil {
		return err
	}
	defer img.Close()
	_, _, err = img.ExportJpeg(&vips.JpegExportParams{Quality: 80, StripMetadata: true, OptimizeCoding: true})
	return err
}

// directAll is the naive way to make the same three outputs with govips:
// two thumbnails from the original and a full decode for the clean copy.
func directAll(src []byte) error {
	if err := directThumbnail(src, 320); err != nil {
		return err
	}
	if err := directThumbnail(src, 1280); err != nil {
		return err
	}
	img, err := vips.LoadImageFromBuffer(src, vips.NewImportParams())
	if err != nil {
		return err
	}
	defer img.Close()
	if err := img.AutoRotate(); err != nil {
		return err
	}
	_, _, err = img.ExportJpeg(&vips.JpegExportParams{Quality: 92, StripMetadata: true, OptimizeCoding: true})
	return err
}

// compare times ours and the direct call alternately in one loop, so both
// see the same machine state, and reports ours as ns/op and ms/photo, the
// direct call's ms/photo, their ratio, and the process's peak memory.
func compare(b *testing.B, ours, direct func() error) {
	b.Helper()
	timed := func(f func() error) time.Duration {
		t := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		return time.Since(t)
	}
	_ = timed(ours) // warm up both before measuring
	_ = timed(direct)
	phototest.ResetPeakRSS()
	b.ReportAllocs()
	b.ResetTimer()
	var tOurs, tDirect time.Duration
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			tOurs += timed(ours)
			tDirect += timed(direct)
		} else {
			tDirect += timed(direct)
			tOurs += timed(ours)
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(tOurs.Nanoseconds())/n, "ns/op")
	b.ReportMetric(float64(tOurs.Microseconds())/1000/n, "ms/photo")
	b.ReportMetric(float64(tDirect.Microseconds())/1000/n, "direct-ms/photo")
	b.ReportMetric(float64(tOurs)/float64(tDirect), "ratio")
	reportMemory(b)
}

func reportMemory(b *testing.B) {
	var vm vips.MemoryStats
	vips.ReadVipsMemStats(&vm)
	b.ReportMetric(phototest.PeakRSS(), "peak-RSS-MB")
	b.ReportMetric(float64(vm.MemHigh)/(1<<20), "vips-peak-MB")
}

// BenchmarkPreview measures, per photo: the preview step alone (one grid
// preview, checks included) against a direct govips thumbnail; the whole
// image step (grid, viewer and clean copy) against the naive direct calls;
// the whole image step on two workers (photos per second on 2 cores); and
// the vipsthumbnail command for reference (process start included).
func BenchmarkPreview(b *testing.B) {
	m := preview.New(preview.Options{})
	for _, p := range benchPhotos {
		src := hygienetest.Shared(b, p.file)
		b.Run(p.name+"/grid-320", func(b *testing.B) {
			compare(b, func() error { _, err := m.Thumbnail(src, 320); return err },
				func() error { return directThumbnail(src, 320) })
		})
		b.Run(p.name+"/viewer-1280", func(b *testing.B) {
			compare(b, func() error { _, err := m.Thumbnail(src, 1280); return err },
				func() error { return directThumbnail(src, 1280) })
		})
		b.Run(p.name+"/make", func(b *testing.B) {
			compare(b, func() error { _, err := m.Make(src); return err },
				func() error { return directAll(src) })
		})
		b.Run(p.name+"/make-2-workers", func(b *testing.B) {
			if _, err := m.Make(src); err != nil {
				b.Fatal(err)
			}
			phototest.ResetPeakRSS()
			b.ReportAllocs()
			b.ResetTimer()
			var next atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if _, err := m.Make(src); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.ReportMetric(float64(b.N)/el.Seconds(), "photos/s")
			b.ReportMetric(float64(el.Microseconds())/1000/float64(b.N), "ms/photo")
			reportMemory(b)
		})
		b.Run(p.name+"/vipsthumbnail-cli-320", func(b *testing.B) {
			bin, err := exec.LookPath("vipsthumbnail")
			if err != nil {
				b.Fatalf("vipsthumbnail (apt libvips-tools) is not installed: %v", err)
			}
			dir := b.TempDir()
			in := filepath.Join(dir, p.file)
			if err := os.WriteFile(in, src, 0o600); err != nil {
				b.Fatal(err)
			}
			out := filepath.Join(dir, "out.jpg") + "[Q=80,strip,optimize_coding]"
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if msg, err := exec.Command(bin, in, "--size", "320", "-o", out).CombinedOutput(); err != nil {
					b.Fatalf("vipsthumbnail: %v: %s", err, msg)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/photo")
		})
	}
}
