package preview_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/clinicalimages/clinimg/services/thumbnailer/internal/phototest"
	"github.com/clinicalimages/clinimg/services/thumbnailer/preview"
)

// seeds are small real headers of every kind Sniff meets; the checked-in
// corpus under testdata/fuzz adds the odd ones fuzzing found.
func seeds(f *testing.F) {
	fix := phototest.Fixtures()
	for _, name := range []string{"notes.jpg", "page.html", "flood.png"} {
		f.Add(fix[name])
	}
	f.Add(fix["gps.jpg"][:2048])
	f.Add(fix["gps-orient6.jpg"][:2048])
	f.Add(phototest.Shared(f, "photo-12mp-orient6.jpg")[:4096])
	f.Add(vp8x(300, 200))
	f.Add(jpegWithSize(10, 10))
	f.Add([]byte("\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic\x00\x00\x00\x24meta\x00\x00\x00\x00\x00\x00\x00\x18iprp\x00\x00\x00\x10ipco\x00\x00\x00\x08ispe"))
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00\x00\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01"))
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f\xff\xff\xff\xff"))
}

// FuzzSniff: whatever the bytes, Sniff neither panics nor accepts nonsense.
// An accepted header names a format and a size; a refusal is a Rejection
// with a code and a readable reason.
func FuzzSniff(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := preview.Sniff(b)
		if err != nil {
			var r *preview.Rejection
			if !errors.As(err, &r) || r.Code == "" || r.Reason == "" || strings.ContainsAny(r.Reason, "\x00\n") {
				t.Fatalf("not a clean rejection: %#v", err)
			}
			return
		}
		if h.Format.ContentType() == "" || h.Width <= 0 || h.Height <= 0 || h.Orientation < 0 || h.Orientation > 8 {
			t.Fatalf("accepted a nonsense header: %+v", h)
		}
	})
}

// FuzzStripJPEG: stripping never panics, never grows the file, leaves no
// metadata segment or trailer, and is idempotent.
func FuzzStripJPEG(f *testing.F) {
	fix := phototest.Fixtures()
	f.Add(fix["gps.jpg"])
	f.Add(fix["truncated.jpg"])
	f.Add(jpegWithSize(10, 10))
	f.Add([]byte{0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0xFF, 0xD0, 0xFF, 0xFF, 0xD9})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := preview.StripJPEG(b)
		if err != nil {
			return
		}
		if len(out) > len(b) {
			t.Fatalf("grew from %d to %d bytes", len(b), len(out))
		}
		segs, trailing, err := preview.Segments(out)
		if err != nil {
			t.Fatalf("output does not parse: %v", err)
		}
		if trailing != 0 {
			t.Fatalf("%d bytes after EOI", trailing)
		}
		for _, s := range segs {
			switch {
			case s.Name == "APP0" && s.Ident == "JFIF", s.Name == "APP2" && s.Ident == "ICC_PROFILE", s.Name == "APP14" && s.Ident == "Adobe":
			case strings.HasPrefix(s.Name, "APP"), s.Name == "COM":
				t.Fatalf("kept %s %q", s.Name, s.Ident)
			}
		}
		again, err := preview.StripJPEG(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent (err %v)", err)
		}
	})
}
