package preview_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/davidbyttow/govips/v2/vips"
	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/hygiene"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
)

func TestSniffAccepts(t *testing.T) {
	scene := hygienetest.Plain(640, 480)
	cases := []struct {
		name string
		src  []byte
		want hygiene.Header
	}{
		{"12 MP phone JPEG", hygienetest.Shared(t, "photo-12mp-orient6.jpg"), hygiene.Header{Format: hygiene.JPEG, Width: 4032, Height: 3024, Orientation: 6, Components: 3}},
		{"1920 px JPEG without Exif", hygienetest.Shared(t, "photo-1920.jpg"), hygiene.Header{Format: hygiene.JPEG, Width: 1920, Height: 1440, Components: 3}},
		{"Landscape_0 (no orientation)", hygienetest.Shared(t, "exif-orientation/Landscape_0.jpg"), hygiene.Header{Format: hygiene.JPEG, Width: 1800, Height: 1200, Components: 3}},
		{"Landscape_8", hygienetest.Shared(t, "exif-orientation/Landscape_8.jpg"), hygiene.Header{Format: hygiene.JPEG, Width: 1200, Height: 1800, Orientation: 8, Components: 3}},
		{"GPS JPEG orientation 6", hygienetest.GPSJPEG(6), hygiene.Header{Format: hygiene.JPEG, Width: 480, Height: 640, Orientation: 6, Components: 3}},
		{"truncated JPEG (header intact)", hygienetest.Fixtures()["truncated.jpg"], hygiene.Header{Format: hygiene.JPEG, Width: 640, Height: 480, Components: 3}},
		{"pixel-flood PNG (size is all Sniff checks)", hygienetest.Fixtures()["flood.png"], hygiene.Header{Format: hygiene.PNG, Width: 20000, Height: 20000}},
		{"PNG", pngWithAlpha(t), hygiene.Header{Format: hygiene.PNG, Width: 640, Height: 480}},
		{"lossy WebP", convert(t, scene, func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
			return r.ExportWebp(vips.NewWebpExportParams())
		}), hygiene.Header{Format: hygiene.WebP, Width: 640, Height: 480}},
		{"lossless WebP", convert(t, scene, func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
			p := vips.NewWebpExportParams()
			p.Lossless = true
			return r.ExportWebp(p)
		}), hygiene.Header{Format: hygiene.WebP, Width: 640, Height: 480}},
		{"extended WebP (VP8X)", hygienetest.VP8X(1000, 700), hygiene.Header{Format: hygiene.WebP, Width: 1000, Height: 700}},
		{"HEIC", convert(t, scene, func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
			return r.ExportHeif(vips.NewHeifExportParams())
		}), hygiene.Header{Format: hygiene.HEIC, Width: 640, Height: 480}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := hygiene.Sniff(c.src)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(c.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestSniffRejects(t *testing.T) {
	heic := convert(t, hygienetest.Plain(64, 48), func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
		return r.ExportHeif(vips.NewHeifExportParams())
	})
	avif := bytes.Clone(heic)
	copy(avif[8:12], "avif")
	for i := 16; i+4 <= 28; i += 4 { // the compatible brands
		copy(avif[i:i+4], "avif")
	}
	cases := []struct {
		name string
		src  []byte
		code string
	}{
		{"text", []byte(hygienetest.Text), hygiene.CodeNotImage},
		{"HTML page", []byte(hygienetest.HTML), hygiene.CodeNotImage},
		{"HTML with BOM and spaces", []byte("\xEF\xBB\xBF  \n<html lang=en><body>hi</body></html>"), hygiene.CodeNotImage},
		{"SVG", []byte(`<svg xmlns="http://www.w3.org/2000/svg" width="20000" height="20000"/>`), hygiene.CodeUnsupported},
		{"TIFF", []byte("II*\x00\x08\x00\x00\x00\x00\x00"), hygiene.CodeUnsupported},
		{"AVIF", avif, hygiene.CodeUnsupported},
		{"MP4 video", []byte("\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"), hygiene.CodeUnsupported},
		{"JPEG without frame", []byte{0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02}, hygiene.CodeCorrupt},
		{"JPEG of zero height", hygienetest.JPEGHeader(0, 100), hygiene.CodeCorrupt},
		{"PNG without IHDR", []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIEND\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), hygiene.CodeCorrupt},
		{"WebP with unknown chunk", []byte("RIFF\x20\x00\x00\x00WEBPXXXX\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), hygiene.CodeCorrupt},
		{"HEIC without meta", []byte("\x00\x00\x00\x10ftypheic\x00\x00\x00\x00\x00\x00\x00\x08free"), hygiene.CodeCorrupt},
		{"binary noise", []byte{1, 2, 3, 4, 5, 0, 0, 0, 200, 201, 202, 9, 9, 9}, hygiene.CodeNotImage},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := hygiene.Sniff(c.src)
			var r *hygiene.Rejection
			if !errors.As(err, &r) {
				t.Fatalf("got %v, want a rejection", err)
			}
			if r.Code != c.code {
				t.Errorf("code %q (%s), want %q", r.Code, r.Reason, c.code)
			}
		})
	}
}

func TestStripJPEGKeepsColourProfileAndProgressiveScans(t *testing.T) {
	// A progressive JPEG with an ICC profile, made by
	// libvips from the 1920 px photo.
	img, err := vips.NewImageFromBuffer(hygienetest.Shared(t, "photo-1920.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := img.TransformICCProfile(vips.SRGBIEC6196621ICCProfilePath); err != nil {
		t.Fatal(err)
	}
	src, _, err := img.ExportJpeg(&vips.JpegExportParams{Quality: 85, Interlace: true, OptimizeScans: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err := hygiene.StripJPEG(src)
	if err != nil {
		t.Fatal(err)
	}
	segs, _, err := hygiene.Segments(out)
	if err != nil {
		t.Fatal(err)
	}
	icc, scans := 0, 0
	for _, s := range segs {
		if s.Ident == "ICC_PROFILE" {
			icc++
		}
		if s.Name == "SOS" {
			scans++
		}
	}
	if icc != 1 || scans < 2 {
		t.Errorf("kept %d ICC segments and %d scans, want 1 and a progressive file's several", icc, scans)
	}
	if d := diff(t, out, src); d != 0 {
		t.Errorf("pixels changed by %.3f", d)
	}
}
