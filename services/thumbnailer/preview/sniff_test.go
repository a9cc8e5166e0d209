package preview_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/davidbyttow/govips/v2/vips"
	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/services/thumbnailer/internal/phototest"
	"github.com/clinicalimages/clinimg/services/thumbnailer/preview"
)

func TestSniffAccepts(t *testing.T) {
	scene := phototest.Plain(640, 480)
	cases := []struct {
		name string
		src  []byte
		want preview.Header
	}{
		{"12 MP phone JPEG", phototest.Shared(t, "photo-12mp-orient6.jpg"), preview.Header{Format: preview.JPEG, Width: 4032, Height: 3024, Orientation: 6, Components: 3}},
		{"1920 px JPEG without Exif", phototest.Shared(t, "photo-1920.jpg"), preview.Header{Format: preview.JPEG, Width: 1920, Height: 1440, Components: 3}},
		{"Landscape_0 (no orientation)", phototest.Shared(t, "exif-orientation/Landscape_0.jpg"), preview.Header{Format: preview.JPEG, Width: 1800, Height: 1200, Components: 3}},
		{"Landscape_8", phototest.Shared(t, "exif-orientation/Landscape_8.jpg"), preview.Header{Format: preview.JPEG, Width: 1200, Height: 1800, Orientation: 8, Components: 3}},
		{"GPS JPEG orientation 6", phototest.GPSJPEG(6), preview.Header{Format: preview.JPEG, Width: 480, Height: 640, Orientation: 6, Components: 3}},
		{"truncated JPEG (header intact)", phototest.Fixtures()["truncated.jpg"], preview.Header{Format: preview.JPEG, Width: 640, Height: 480, Components: 3}},
		{"pixel-flood PNG (size is all Sniff checks)", phototest.Fixtures()["flood.png"], preview.Header{Format: preview.PNG, Width: 20000, Height: 20000}},
		{"PNG", pngWithAlpha(t), preview.Header{Format: preview.PNG, Width: 640, Height: 480}},
		{"lossy WebP", convert(t, scene, func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
			return r.ExportWebp(vips.NewWebpExportParams())
		}), preview.Header{Format: preview.WebP, Width: 640, Height: 480}},
		{"lossless WebP", convert(t, scene, func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
			p := vips.NewWebpExportParams()
			p.Lossless = true
			return r.ExportWebp(p)
		}), preview.Header{Format: preview.WebP, Width: 640, Height: 480}},
		{"extended WebP (VP8X)", vp8x(1000, 700), preview.Header{Format: preview.WebP, Width: 1000, Height: 700}},
		{"HEIC", convert(t, scene, func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
			return r.ExportHeif(vips.NewHeifExportParams())
		}), preview.Header{Format: preview.HEIC, Width: 640, Height: 480}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := preview.Sniff(c.src)
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
	heic := convert(t, phototest.Plain(64, 48), func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
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
		{"text", []byte(phototest.Text), preview.CodeNotImage},
		{"HTML page", []byte(phototest.HTML), preview.CodeNotImage},
		{"HTML with BOM and spaces", []byte("\xEF\xBB\xBF  \n<html lang=en><body>hi</body></html>"), preview.CodeNotImage},
		{"SVG", []byte(`<svg xmlns="http://www.w3.org/2000/svg" width="20000" height="20000"/>`), preview.CodeUnsupported},
		{"TIFF", []byte("II*\x00\x08\x00\x00\x00\x00\x00"), preview.CodeUnsupported},
		{"AVIF", avif, preview.CodeUnsupported},
		{"MP4 video", []byte("\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"), preview.CodeUnsupported},
		{"JPEG without frame", []byte{0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02}, preview.CodeCorrupt},
		{"JPEG of zero height", jpegWithSize(0, 100), preview.CodeCorrupt},
		{"PNG without IHDR", []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIEND\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), preview.CodeCorrupt},
		{"WebP with unknown chunk", []byte("RIFF\x20\x00\x00\x00WEBPXXXX\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), preview.CodeCorrupt},
		{"HEIC without meta", []byte("\x00\x00\x00\x10ftypheic\x00\x00\x00\x00\x00\x00\x00\x08free"), preview.CodeCorrupt},
		{"binary noise", []byte{1, 2, 3, 4, 5, 0, 0, 0, 200, 201, 202, 9, 9, 9}, preview.CodeNotImage},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := preview.Sniff(c.src)
			var r *preview.Rejection
			if !errors.As(err, &r) {
				t.Fatalf("got %v, want a rejection", err)
			}
			if r.Code != c.code {
				t.Errorf("code %q (%s), want %q", r.Code, r.Reason, c.code)
			}
		})
	}
}

// vp8x is the header of an extended WebP of the given canvas size.
func vp8x(w, h int) []byte {
	b := []byte("RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00")
	w, h = w-1, h-1
	return append(b, byte(w), byte(w>>8), byte(w>>16), byte(h), byte(h>>8), byte(h>>16))
}

// jpegWithSize is a JPEG header whose frame claims w×h.
func jpegWithSize(w, h int) []byte {
	return []byte{0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), 1, 1, 0x11, 0, 0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 0x3f, 0}
}

func TestStripJPEG(t *testing.T) {
	src := phototest.GPSJPEG(1)
	segs, trailing, err := preview.Segments(src)
	if err != nil {
		t.Fatal(err)
	}
	if trailing == 0 {
		t.Fatal("the source should have a trailer")
	}
	out, err := preview.StripJPEG(src)
	if err != nil {
		t.Fatal(err)
	}
	got, trailing, err := preview.Segments(out)
	if err != nil {
		t.Fatal(err)
	}
	var before, after []string
	for _, s := range segs {
		before = append(before, fmt.Sprintf("%s %s", s.Name, s.Ident))
	}
	for _, s := range got {
		after = append(after, fmt.Sprintf("%s %s", s.Name, s.Ident))
	}
	wantBefore := []string{"APP0 JFIF", "APP1 Exif", "APP1 http://ns.adobe.com/xap/1.0/", "APP2 MPF", "APP13 Photoshop 3.0", "COM ", "DQT ", "SOF0 ", "DHT ", "SOS ", "EOI "}
	wantAfter := []string{"APP0 JFIF", "DQT ", "SOF0 ", "DHT ", "SOS ", "EOI "}
	if d := cmp.Diff(wantBefore, before); d != "" {
		t.Errorf("source segments (-want +got):\n%s", d)
	}
	if d := cmp.Diff(wantAfter, after); d != "" {
		t.Errorf("stripped segments (-want +got):\n%s", d)
	}
	if trailing != 0 {
		t.Errorf("%d bytes after EOI remain", trailing)
	}
	again, err := preview.StripJPEG(out)
	if err != nil || !bytes.Equal(again, out) {
		t.Errorf("stripping twice changed the file (err %v)", err)
	}
}

func TestStripJPEGKeepsColourProfileAndProgressiveScans(t *testing.T) {
	// A progressive JPEG with an ICC profile, made by
	// libvips from the 1920 px photo.
	img, err := vips.NewImageFromBuffer(phototest.Shared(t, "photo-1920.jpg"))
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
	out, err := preview.StripJPEG(src)
	if err != nil {
		t.Fatal(err)
	}
	segs, _, err := preview.Segments(out)
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

func TestStripJPEGRefusesBrokenFiles(t *testing.T) {
	fix := phototest.Fixtures()
	for name, src := range map[string][]byte{
		"truncated":        fix["truncated.jpg"],
		"header only":      fix["gps.jpg"][:400],
		"not a JPEG":       []byte(phototest.Text),
		"no scan":          {0xFF, 0xD8, 0xFF, 0xD9},
		"bad length":       {0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01, 0xFF, 0xD9},
		"stuffed marker":   {0xFF, 0xD8, 0xFF, 0x00, 0xFF, 0xD9},
		"garbage between":  {0xFF, 0xD8, 0x12, 0x34, 0xFF, 0xD9},
		"unfinished entry": {0xFF, 0xD8, 0xFF},
	} {
		if _, err := preview.StripJPEG(src); err == nil {
			t.Errorf("%s: stripped without error", name)
		}
	}
}
