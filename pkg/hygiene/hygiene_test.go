package hygiene_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/hygiene"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
)

func TestStripJPEG(t *testing.T) {
	src := hygienetest.GPSJPEG(1)
	segs, trailing, err := hygiene.Segments(src)
	if err != nil {
		t.Fatal(err)
	}
	if trailing == 0 {
		t.Fatal("the source should have a trailer")
	}
	out, err := hygiene.StripJPEG(src)
	if err != nil {
		t.Fatal(err)
	}
	got, trailing, err := hygiene.Segments(out)
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
	again, err := hygiene.StripJPEG(out)
	if err != nil || !bytes.Equal(again, out) {
		t.Errorf("stripping twice changed the file (err %v)", err)
	}
}

func TestStripJPEGRefusesBrokenFiles(t *testing.T) {
	fix := hygienetest.Fixtures()
	for name, src := range map[string][]byte{
		"truncated":        fix["truncated.jpg"],
		"header only":      fix["gps.jpg"][:400],
		"not a JPEG":       []byte(hygienetest.Text),
		"no scan":          {0xFF, 0xD8, 0xFF, 0xD9},
		"bad length":       {0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01, 0xFF, 0xD9},
		"stuffed marker":   {0xFF, 0xD8, 0xFF, 0x00, 0xFF, 0xD9},
		"garbage between":  {0xFF, 0xD8, 0x12, 0x34, 0xFF, 0xD9},
		"unfinished entry": {0xFF, 0xD8, 0xFF},
	} {
		if _, err := hygiene.StripJPEG(src); err == nil {
			t.Errorf("%s: stripped without error", name)
		}
	}
}

func TestDetect(t *testing.T) {
	cases := []struct {
		name string
		head []byte
		want hygiene.Format
	}{
		{"JPEG", hygienetest.Plain(8, 8)[:16], hygiene.JPEG},
		{"PNG", []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"), hygiene.PNG},
		{"WebP", hygienetest.VP8X(10, 10)[:16], hygiene.WebP},
		{"HEIC brand", []byte("\x00\x00\x00\x18ftypheic\x00\x00\x00\x00"), hygiene.HEIC},
		{"generic HEIF brand", []byte("\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00"), hygiene.HEIC},
		{"MP4", []byte("\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00"), ""},
		{"AVIF", []byte("\x00\x00\x00\x18ftypavif\x00\x00\x00\x00"), ""},
		{"GIF", []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00"), ""},
		{"text", []byte(hygienetest.Text)[:16], ""},
		{"JPEG cut at two bytes", []byte{0xFF, 0xD8}, ""},
		{"empty", nil, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := hygiene.Detect(c.head); got != c.want {
				t.Errorf("Detect = %q, want %q", got, c.want)
			}
		})
	}
}

// TestOrient: every orientation undone by its inverse gives the picture
// back exactly, and the quarter turns put a known corner where EXIF says.
func TestOrient(t *testing.T) {
	up := hygienetest.Upright(6, 4)
	for o := 1; o <= 8; o++ {
		back := hygiene.Orient(hygiene.Orient(up, hygiene.Inverse(o)), o)
		if !bytes.Equal(back.Pix, up.Pix) || back.Rect != up.Rect {
			t.Errorf("orientation %d: Orient(Orient(img, Inverse(o)), o) is not img", o)
		}
	}
	// A 2×1 picture, left pixel red: orientation 6 is a quarter turn
	// clockwise, so red ends on top of a 1×2 picture; 8 puts it below.
	src := image.NewRGBA(image.Rect(0, 0, 2, 1))
	red := color.RGBA{255, 0, 0, 255}
	src.SetRGBA(0, 0, red)
	for o, wantRedAt := range map[int]image.Point{6: {0, 0}, 8: {0, 1}, 2: {1, 0}, 1: {0, 0}} {
		got := hygiene.Orient(src, o)
		if o >= 5 && got.Rect.Dx() != 1 {
			t.Errorf("orientation %d: %v, want 1×2", o, got.Rect)
		}
		if got.RGBAAt(wantRedAt.X, wantRedAt.Y) != red {
			t.Errorf("orientation %d: red not at %v", o, wantRedAt)
		}
	}
}

func TestStripPNG(t *testing.T) {
	var enc bytes.Buffer
	if err := png.Encode(&enc, hygienetest.Upright(8, 8)); err != nil {
		t.Fatal(err)
	}
	plain := enc.Bytes()
	// Text, time and EXIF chunks before IDAT, a trailer after IEND.
	src := append([]byte{}, plain[:33]...) // signature and IHDR
	for _, c := range []struct{ typ, data string }{{"tEXt", "Comment\x00SECRET one"}, {"iTXt", "XML\x00\x00\x00\x00\x00SECRET two"}, {"tIME", "\x07\xea\x0c\x02\x01\x02\x03"}, {"eXIf", "MM\x00*SECRET three"}} {
		src = binary.BigEndian.AppendUint32(src, uint32(len(c.data)))
		src = append(src, c.typ+c.data...)
		src = binary.BigEndian.AppendUint32(src, crc32.ChecksumIEEE([]byte(c.typ+c.data)))
	}
	src = append(src, plain[33:]...)
	src = append(src, "SECRET trailer"...)
	out, err := hygiene.StripPNG(src)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, plain) {
		t.Errorf("stripped PNG is not the plain one (%d bytes, want %d); SECRET kept: %v", len(out), len(plain), bytes.Contains(out, []byte("SECRET")))
	}
	for name, b := range map[string][]byte{"cut": src[:len(src)/2], "not a PNG": []byte(hygienetest.Text), "chunk overruns": append(bytes.Clone(plain[:33]), 0x7f, 0xff, 0xff, 0xff, 'I', 'D', 'A', 'T')} {
		if _, err := hygiene.StripPNG(b); err == nil {
			t.Errorf("%s: stripped without error", name)
		}
	}
}
