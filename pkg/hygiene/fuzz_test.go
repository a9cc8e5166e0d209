package hygiene_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/clinicalimages/clinimg/pkg/hygiene"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
)

// seeds are small real headers of every kind Sniff meets; the checked-in
// corpus under testdata/fuzz adds the odd ones fuzzing found.
func seeds(f *testing.F) {
	fix := hygienetest.Fixtures()
	for _, name := range []string{"notes.jpg", "page.html", "flood.png"} {
		f.Add(fix[name])
	}
	f.Add(fix["gps.jpg"][:2048])
	f.Add(fix["gps-orient6.jpg"][:2048])
	f.Add(hygienetest.Shared(f, "photo-12mp-orient6.jpg")[:4096])
	f.Add(hygienetest.VP8X(300, 200))
	f.Add(hygienetest.JPEGHeader(10, 10))
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
		h, err := hygiene.Sniff(b)
		if err != nil {
			var r *hygiene.Rejection
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
	fix := hygienetest.Fixtures()
	f.Add(fix["gps.jpg"])
	f.Add(fix["truncated.jpg"])
	f.Add(hygienetest.JPEGHeader(10, 10))
	f.Add([]byte{0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0xFF, 0xD0, 0xFF, 0xFF, 0xD9})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := hygiene.StripJPEG(b)
		if err != nil {
			return
		}
		if len(out) > len(b) {
			t.Fatalf("grew from %d to %d bytes", len(b), len(out))
		}
		segs, trailing, err := hygiene.Segments(out)
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
		again, err := hygiene.StripJPEG(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent (err %v)", err)
		}
	})
}

// FuzzStripPNG: stripping never panics, never grows the file, keeps no
// text, time or EXIF chunk, and is idempotent.
func FuzzStripPNG(f *testing.F) {
	f.Add(hygienetest.FloodPNG(100, 100))
	f.Add([]byte("\x89PNG\r\n\x1a\n\x00\x00\x00\x04tEXtabcd\x00\x00\x00\x00\x00\x00\x00\x00IEND\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := hygiene.StripPNG(b)
		if err != nil {
			return
		}
		if len(out) > len(b) {
			t.Fatalf("grew from %d to %d bytes", len(b), len(out))
		}
		for i := 8; i+8 <= len(out); {
			n := int(binary.BigEndian.Uint32(out[i:]))
			switch typ := string(out[i+4 : i+8]); typ {
			case "tEXt", "zTXt", "iTXt", "tIME", "eXIf":
				t.Fatalf("kept a %s chunk", typ)
			}
			i += 12 + n
		}
		again, err := hygiene.StripPNG(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent (err %v)", err)
		}
	})
}
