package preview_test

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/davidbyttow/govips/v2/vips"
	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/hygiene"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
	"github.com/clinicalimages/clinimg/services/thumbnailer/internal/phototest"
	"github.com/clinicalimages/clinimg/services/thumbnailer/preview"
)

func TestMain(m *testing.M) {
	if err := preview.Startup(preview.Settings{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// maxDiff is how far two pictures of the same scene may differ: the
// root-mean-square difference per channel on 0-255. The nine Landscape
// files were each compressed on their own, so their outputs differ from
// Landscape_1's by up to 13 (Landscape_0) and 9 (the others); a wrong
// rotation or mirror of Landscape_1 differs by 88 to 103.
const maxDiff = 20.0

func mustMake(t *testing.T, m *preview.Maker, src []byte) preview.Result {
	t.Helper()
	res, err := m.Make(src)
	if err != nil {
		t.Fatalf("Make: %v", err)
	}
	return res
}

// size reads a JPEG's size from its header.
func size(t *testing.T, b []byte) image.Point {
	t.Helper()
	h, err := hygiene.Sniff(b)
	if err != nil {
		t.Fatal(err)
	}
	return image.Pt(h.Width, h.Height)
}

func diff(t *testing.T, a, b []byte) float64 {
	t.Helper()
	d, err := phototest.Diff(a, b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Must show 1: every orientation of the public test set looks like
// Landscape_1 once processed, in the grid preview, the viewer image and the
// clean copy.
func TestOrientationSetMatchesLandscape1(t *testing.T) {
	m := preview.New(preview.Options{})
	ref := mustMake(t, m, hygienetest.Shared(t, "exif-orientation/Landscape_1.jpg"))
	if got, want := size(t, ref.Preview), (image.Point{320, 213}); got != want {
		t.Fatalf("Landscape_1 preview is %v, want %v", got, want)
	}
	for i := 0; i <= 8; i++ {
		name := fmt.Sprintf("Landscape_%d.jpg", i)
		t.Run(name, func(t *testing.T) {
			res := mustMake(t, m, hygienetest.Shared(t, "exif-orientation/"+name))
			for _, c := range []struct {
				what      string
				got, want []byte
			}{
				{"preview", res.Preview, ref.Preview},
				{"viewer", res.Viewer, ref.Viewer},
				{"clean", res.Clean, ref.Clean},
			} {
				if d := diff(t, c.got, c.want); d > maxDiff {
					t.Errorf("%s differs from Landscape_1's by %.2f per channel, want at most %.1f", c.what, d, maxDiff)
				}
			}
			if res.Width != 1800 || res.Height != 1200 {
				t.Errorf("upright size %dx%d, want 1800x1200", res.Width, res.Height)
			}
			// Orientation 0 (none) and 1 are upright: metadata removed, scan data kept.
			if want := i <= 1; res.Lossless != want {
				t.Errorf("lossless %t, want %t", res.Lossless, want)
			}
		})
	}
}

// Must show 1: the 12 MP phone photo with orientation 6 comes out portrait.
func TestTwelveMPOrientation6IsPortrait(t *testing.T) {
	m := preview.New(preview.Options{})
	res := mustMake(t, m, hygienetest.Shared(t, "photo-12mp-orient6.jpg"))
	got := []image.Point{size(t, res.Preview), size(t, res.Viewer), size(t, res.Clean), {res.Width, res.Height}}
	want := []image.Point{{240, 320}, {960, 1280}, {3024, 4032}, {3024, 4032}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("preview, viewer, clean, reported size (-want +got):\n%s", d)
	}
	if res.Lossless {
		t.Error("a rotated photo cannot keep its scan data")
	}
}

// metadataIn lists what a JPEG carries besides pixels, or fails the test.
func metadataIn(t *testing.T, b []byte) []string {
	t.Helper()
	segs, trailing, err := hygiene.Segments(b)
	if err != nil {
		t.Fatalf("output is not a well-formed JPEG: %v", err)
	}
	var out []string
	for _, s := range segs {
		switch {
		case s.Name == "APP0" && s.Ident == "JFIF" && s.Size == 18, // JFIF, no thumbnail
			s.Name == "APP2" && s.Ident == "ICC_PROFILE",
			s.Name == "APP14" && s.Ident == "Adobe":
		case strings.HasPrefix(s.Name, "APP"), s.Name == "COM":
			out = append(out, s.Name+" "+s.Ident)
		}
	}
	if trailing > 0 {
		out = append(out, fmt.Sprintf("%d bytes after EOI", trailing))
	}
	for _, s := range hygienetest.Secrets {
		if bytes.Contains(b, []byte(s)) {
			out = append(out, "secret "+s)
		}
	}
	return out
}

// Must show 2: a photo with GPS, XMP, IPTC, a comment and a trailer in, in
// every orientation: nothing of it out, and the picture upright.
func TestNoMetadataOut(t *testing.T) {
	m := preview.New(preview.Options{})
	upright := hygienetest.Plain(640, 480)
	for o := 1; o <= 8; o++ {
		t.Run(fmt.Sprintf("orientation %d", o), func(t *testing.T) {
			src := hygienetest.GPSJPEG(o)
			if !hygienetest.GPSOf(src) || len(metadataIn(t, src)) < 7 {
				t.Fatalf("the source lacks its metadata: %v", metadataIn(t, src))
			}
			res := mustMake(t, m, src)
			for what, b := range map[string][]byte{"preview": res.Preview, "viewer": res.Viewer, "clean": res.Clean} {
				if got := metadataIn(t, b); len(got) > 0 {
					t.Errorf("%s carries %q", what, got)
				}
				if hygienetest.GPSOf(b) {
					t.Errorf("%s has GPS", what)
				}
			}
			if d := diff(t, res.Clean, upright); d > maxDiff {
				t.Errorf("clean copy differs from the upright scene by %.2f", d)
			}
			if got := size(t, res.Preview); got != (image.Point{320, 240}) {
				t.Errorf("preview is %v, want 320x240", got)
			}
		})
	}
}

// The lossless path keeps the scan data exactly: decoding the clean copy
// gives the very pixels of the original.
func TestLosslessCleanCopyKeepsPixels(t *testing.T) {
	m := preview.New(preview.Options{})
	for _, name := range []string{"photo-1920.jpg", "exif-orientation/Landscape_1.jpg"} {
		src := hygienetest.Shared(t, name)
		res := mustMake(t, m, src)
		if !res.Lossless {
			t.Fatalf("%s: not lossless", name)
		}
		if d := diff(t, res.Clean, src); d != 0 {
			t.Errorf("%s: clean copy's pixels differ by %.3f", name, d)
		}
		if len(res.Clean) > len(src) {
			t.Errorf("%s: clean copy grew from %d to %d bytes", name, len(src), len(res.Clean))
		}
	}
}

// Must show 3: files posing as photos are rejected with a reason a GP can read.
func TestRejections(t *testing.T) {
	m := preview.New(preview.Options{})
	fix := hygienetest.Fixtures()
	cases := []struct {
		name string
		src  []byte
		want hygiene.Rejection
	}{
		{"text named .jpg", fix["notes.jpg"], hygiene.Rejection{Code: "not_image", Reason: "not an image: the file is text"}},
		{"HTML page", fix["page.html"], hygiene.Rejection{Code: "not_image", Reason: "not an image: the file is an HTML page"}},
		{"truncated JPEG", fix["truncated.jpg"], hygiene.Rejection{Code: "corrupt", Reason: "corrupt image: the JPEG is truncated (the upload may have been cut off)"}},
		{"truncated PNG", hygienetest.Truncated(png16(t)), hygiene.Rejection{Code: "corrupt", Reason: "corrupt image: the PNG is truncated or damaged (the upload may have been cut off)"}},
		{"pixel-flood PNG", fix["flood.png"], hygiene.Rejection{Code: "too_many_pixels", Reason: "image too large: 20000×20000 pixels (400 megapixels; the limit is 50)"}},
		{"empty", nil, hygiene.Rejection{Code: "not_image", Reason: "not an image: the file is empty"}},
		{"GIF", []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;"), hygiene.Rejection{Code: "unsupported", Reason: "GIF images are not accepted; send a JPEG, PNG, WebP or HEIC photo"}},
		{"PDF", []byte("%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"), hygiene.Rejection{Code: "not_image", Reason: "not an image: the file is a PDF document"}},
		{"random bytes", []byte{0x00, 0x9f, 0x11, 0xfe, 0x02, 0x80, 0x81, 0x03}, hygiene.Rejection{Code: "not_image", Reason: "not an image: the content is not JPEG, PNG, WebP or HEIC"}},
		{"JPEG header only", fix["gps.jpg"][:300], hygiene.Rejection{Code: "corrupt", Reason: "corrupt image: the JPEG is truncated (the upload may have been cut off)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for what, f := range map[string]func() error{
				"Make":      func() error { _, err := m.Make(c.src); return err },
				"Thumbnail": func() error { _, err := m.Thumbnail(c.src, 320); return err },
			} {
				err := f()
				var got *hygiene.Rejection
				if err == nil || !asRejection(err, &got) {
					t.Fatalf("%s: got %v, want a rejection", what, err)
				}
				got.Detail = "" // the decoder's words, for logs
				if d := cmp.Diff(c.want, *got); d != "" {
					t.Errorf("%s (-want +got):\n%s", what, d)
				}
			}
		})
	}
}

func asRejection(err error, r **hygiene.Rejection) bool {
	x, ok := err.(*hygiene.Rejection)
	*r = x
	return ok
}

// Some cameras and editors leave stray bytes between JPEG segments: libjpeg
// warns ("extraneous bytes before marker") but the photo is whole. It must
// be accepted, though a decoder that fails on warnings refuses it.
func TestJPEGWithDecoderWarningIsAccepted(t *testing.T) {
	plain := hygienetest.Plain(640, 480)
	i := bytes.Index(plain, []byte{0xFF, 0xC0}) // before the frame header
	src := append(append(bytes.Clone(plain[:i]), 0x00, 0x11, 0x22), plain[i:]...)
	strict := vips.NewImportParams()
	strict.FailOnError.Set(true)
	if img, err := vips.LoadThumbnailFromBuffer(src, 320, 320, vips.InterestingNone, vips.SizeDown, strict); err == nil {
		_, _, err = img.ExportJpeg(nil)
		img.Close()
		if err == nil {
			t.Fatal("the test photo should make libjpeg warn")
		}
	}
	res, err := preview.New(preview.Options{}).Make(src)
	if err != nil {
		t.Fatal(err)
	}
	if d := diff(t, res.Clean, plain); d != 0 || !res.Lossless {
		t.Errorf("clean copy differs by %.2f (lossless %t), want the same pixels", d, res.Lossless)
	}
	if bytes.Contains(res.Clean, []byte{0x00, 0x11, 0x22, 0xFF, 0xC0}) {
		t.Error("the stray bytes are still there")
	}
}

// A photo over the configured pixel limit is refused before decoding.
func TestMaxPixels(t *testing.T) {
	m := preview.New(preview.Options{MaxPixels: 2_000_000})
	_, err := m.Make(hygienetest.Shared(t, "photo-12mp-orient6.jpg"))
	want := "image too large: 4032×3024 pixels (12 megapixels; the limit is 2)"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

// PNG (with transparency and 16 bits), WebP and HEIC are accepted; all
// outputs are JPEG.
func TestOtherFormats(t *testing.T) {
	m := preview.New(preview.Options{})
	scene := hygienetest.Plain(640, 480)
	whiteRight := hygienetest.Upright(640, 480)
	for y := 0; y < 480; y++ {
		for x := 320; x < 640; x++ {
			whiteRight.SetRGBA(x, y, color.RGBA{255, 255, 255, 255})
		}
	}
	cases := []struct {
		name   string
		src    []byte
		format hygiene.Format
		want   image.Image
	}{
		{"PNG with alpha", pngWithAlpha(t), hygiene.PNG, whiteRight},
		{"16-bit PNG", png16(t), hygiene.PNG, hygienetest.Upright(640, 480)},
		{"WebP", convert(t, scene, func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
			return r.ExportWebp(vips.NewWebpExportParams())
		}), hygiene.WebP, hygienetest.Upright(640, 480)},
		{"HEIC", convert(t, scene, func(r *vips.ImageRef) ([]byte, *vips.ImageMetadata, error) {
			p := vips.NewHeifExportParams()
			p.Quality = 90
			return r.ExportHeif(p)
		}), hygiene.HEIC, hygienetest.Upright(640, 480)},
	}
	if !preview.HEICSupported() {
		t.Fatal("this libvips cannot decode HEIC: install libheif with libde265")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := mustMake(t, m, c.src)
			if res.Header.Format != c.format || res.Lossless {
				t.Errorf("format %s lossless %t, want %s and a re-encoded copy", res.Header.Format, res.Lossless, c.format)
			}
			if res.Width != 640 || res.Height != 480 {
				t.Errorf("size %dx%d, want 640x480", res.Width, res.Height)
			}
			d, err := phototest.Diff(res.Clean, phototest.PNG(c.want))
			if err != nil || d > maxDiff {
				t.Errorf("clean copy differs from the scene by %.2f (%v)", d, err)
			}
			if got := metadataIn(t, res.Viewer); len(got) > 0 {
				t.Errorf("viewer carries %q", got)
			}
		})
	}
}

func convert(t *testing.T, jpegBytes []byte, export func(*vips.ImageRef) ([]byte, *vips.ImageMetadata, error)) []byte {
	t.Helper()
	img, err := vips.NewImageFromBuffer(jpegBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b, _, err := export(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pngWithAlpha is the scene with its right half fully transparent: it must
// come out white there.
func pngWithAlpha(t *testing.T) []byte {
	u := hygienetest.Upright(640, 480)
	for y := 0; y < 480; y++ {
		for x := 0; x < 640; x++ {
			if x >= 320 {
				u.SetRGBA(x, y, color.RGBA{})
			}
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, u); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func png16(t *testing.T) []byte {
	u := hygienetest.Upright(640, 480)
	img := image.NewRGBA64(u.Bounds())
	for y := 0; y < 480; y++ {
		for x := 0; x < 640; x++ {
			img.Set(x, y, u.At(x, y))
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Two workers on 12 MP rotated photos (the costliest path: full decode,
// rotate, re-encode) stay under a ceiling of libvips memory: 64 MB a photo.
// The figure is libvips' own high-water mark for the whole test process;
// peak RSS is in the benchmarks.
func TestMemoryCeilingTwoWorkers12MP(t *testing.T) {
	m := preview.New(preview.Options{})
	src := hygienetest.Shared(t, "photo-12mp-orient6.jpg")
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2 {
				if _, err := m.Make(src); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	var ms vips.MemoryStats
	vips.ReadVipsMemStats(&ms)
	if high := float64(ms.MemHigh) / (1 << 20); high > 2*64 || high < 36 {
		t.Errorf("libvips peaked at %.0f MB, want between one decoded photo (36 MB) and 128 MB", high)
	}
}
