// Package hygienetest makes the photos the image-hygiene tests use, in pure
// Go: the project's shared test photos, a synthetic JPEG full of location
// metadata (GPSJPEG, or any JPEG with WithMetadata), and files that pose as
// photos (text, HTML, a truncated JPEG, a pixel-flood PNG).
package hygienetest

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"os"
	"path/filepath"
	"testing"

	"github.com/clinicalimages/clinimg/pkg/hygiene"
)

// SharedDir finds the project's shared test photos: $CLINIMG_TESTDATA, or
// the first "shared/testdata" found walking up from the working directory.
func SharedDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("CLINIMG_TESTDATA"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		cand := filepath.Join(dir, "shared", "testdata")
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			return cand
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no shared/testdata above the working directory; set CLINIMG_TESTDATA")
		}
		dir = parent
	}
}

// Shared reads one shared test photo, e.g. "photo-1920.jpg" or
// "exif-orientation/Landscape_6.jpg".
func Shared(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(SharedDir(t), filepath.FromSlash(name)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Secrets are strings planted in GPSJPEG's metadata: none may appear in
// anything made from it.
var Secrets = []string{
	"ClinimgTestCam",           // Exif Make
	"Secret Model 9000",        // Exif Model
	"exif:GPSLatitude",         // XMP
	"-36.8485,174.7633 secret", // XMP location
	"NHI ZZZ0000 comment",      // COM
	"IPTC caption secret",      // APP13
	"TRAILING VIDEO SECRET",    // after EOI
}

// Upright is the synthetic scene GPSJPEG shows once its orientation is
// applied: four coloured quadrants over a gradient, so any wrong rotation
// or mirror shows.
func Upright(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			g := uint8(40 + 120*x/w)
			c := color.RGBA{g, g, g, 255}
			switch {
			case x < w/3 && y < h/3:
				c = color.RGBA{220, 30, 30, 255} // top left red
			case x >= 2*w/3 && y < h/3:
				c = color.RGBA{30, 200, 40, 255} // top right green
			case x < w/3 && y >= 2*h/3:
				c = color.RGBA{30, 40, 220, 255} // bottom left blue
			}
			img.SetRGBA(x, y, c)
		}
	}
	return img
}

// EXIF orientation o (1-8): the inverse of what a viewer applies.
func stored(u *image.RGBA, o int) *image.RGBA { return hygiene.Orient(u, hygiene.Inverse(o)) }

// GPSJPEG is a 640×480 scene stored with EXIF orientation o and wrapped in
// every kind of metadata a phone or editor writes (WithMetadata).
func GPSJPEG(o int) []byte {
	var enc bytes.Buffer
	if err := jpeg.Encode(&enc, stored(Upright(640, 480), o), &jpeg.Options{Quality: 90}); err != nil {
		panic(err)
	}
	return WithMetadata(enc.Bytes(), o)
}

// WithMetadata wraps a plain JPEG in every kind of metadata a phone or
// editor writes: Exif with camera and GPS tags and orientation o, XMP with a
// location, a comment, IPTC, MPF, a JFIF thumbnail field, and bytes after
// the end of the image. Each carries one of Secrets.
func WithMetadata(plain []byte, o int) []byte {
	body := plain[2:] // after SOI
	var b bytes.Buffer
	b.Write([]byte{0xFF, 0xD8})
	// JFIF 1.01 with a 1×1 thumbnail.
	seg(&b, 0xE0, append([]byte("JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x01\x01"), 255, 0, 0))
	seg(&b, 0xE1, Exif(o, true))
	seg(&b, 0xE1, []byte("http://ns.adobe.com/xap/1.0/\x00"+
		`<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">`+
		`<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="36,50.91S" exif:GPSLongitude="174,45.80E"`+
		` xmlns:dc="http://purl.org/dc/elements/1.1/" dc:description="-36.8485,174.7633 secret"/></rdf:RDF></x:xmpmeta>`))
	seg(&b, 0xE2, []byte("MPF\x00II*\x00\x08\x00\x00\x00"))
	seg(&b, 0xED, []byte("Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x18\x1c\x02\x78\x00\x13IPTC caption secret"))
	seg(&b, 0xFE, []byte("NHI ZZZ0000 comment"))
	b.Write(body)
	b.WriteString("TRAILING VIDEO SECRET")
	return b.Bytes()
}

func seg(b *bytes.Buffer, marker byte, payload []byte) {
	b.Write([]byte{0xFF, marker})
	_ = binary.Write(b, binary.BigEndian, uint16(len(payload)+2))
	b.Write(payload)
}

// Exif is an APP1 Exif payload (little-endian TIFF) with Make, Model,
// Orientation o and, when gps is set, a GPS IFD placing the photo in
// Auckland.
func Exif(o int, gps bool) []byte {
	le := binary.LittleEndian
	type entry struct {
		tag, typ uint16
		count    uint32
		data     []byte // inline when 4 bytes or fewer
	}
	ascii := func(s string) []byte { return append([]byte(s), 0) }
	short := func(v uint16) []byte { return le.AppendUint16(nil, v) }
	rational := func(vs ...uint32) []byte {
		var out []byte
		for _, v := range vs {
			out = le.AppendUint32(out, v)
			out = le.AppendUint32(out, 1)
		}
		return out
	}
	// Layout: header (8) | IFD0 | GPS IFD | data area.
	ifd0 := []entry{
		{0x010F, 2, 15, ascii("ClinimgTestCam")},
		{0x0110, 2, 18, ascii("Secret Model 9000")},
		{0x0112, 3, 1, short(uint16(o))},
	}
	gpsIFD := []entry{
		{0x0000, 1, 4, []byte{2, 3, 0, 0}},
		{0x0001, 2, 2, ascii("S")},
		{0x0002, 5, 3, rational(36, 50, 54)},
		{0x0003, 2, 2, ascii("E")},
		{0x0004, 5, 3, rational(174, 45, 48)},
	}
	if gps {
		ifd0 = append(ifd0, entry{0x8825, 4, 1, nil}) // offset filled below
	}
	ifdSize := func(n int) int { return 2 + 12*n + 4 }
	ifd0Off := 8
	gpsOff := ifd0Off + ifdSize(len(ifd0))
	dataOff := gpsOff
	if gps {
		dataOff += ifdSize(len(gpsIFD))
	}
	var data []byte
	write := func(out []byte, es []entry) []byte {
		out = le.AppendUint16(out, uint16(len(es)))
		for _, e := range es {
			out = le.AppendUint16(out, e.tag)
			out = le.AppendUint16(out, e.typ)
			out = le.AppendUint32(out, e.count)
			switch {
			case e.tag == 0x8825:
				out = le.AppendUint32(out, uint32(gpsOff))
			case len(e.data) <= 4:
				out = append(out, e.data...)
				out = append(out, make([]byte, 4-len(e.data))...)
			default:
				out = le.AppendUint32(out, uint32(dataOff+len(data)))
				data = append(data, e.data...)
			}
		}
		return le.AppendUint32(out, 0)
	}
	t := []byte("II*\x00\x08\x00\x00\x00")
	t = write(t, ifd0)
	if gps {
		t = write(t, gpsIFD)
	}
	t = append(t, data...)
	return append([]byte("Exif\x00\x00"), t...)
}

// GPSOf reports whether a JPEG carries an Exif block with a GPS IFD pointer.
func GPSOf(b []byte) bool {
	i := bytes.Index(b, []byte("Exif\x00\x00II*\x00"))
	if i < 0 {
		return false
	}
	// Tag 0x8825 of type LONG, little-endian.
	return bytes.Contains(b[i:], []byte{0x25, 0x88, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00})
}

// Truncated is the first part of a real JPEG, as a phone upload cut off
// mid-way leaves it.
func Truncated(src []byte) []byte { return bytes.Clone(src[:len(src)*6/10]) }

// FloodPNG is a valid-looking PNG of a few dozen bytes that claims w×h
// pixels: a decoder that believes it allocates w×h×3 bytes.
func FloodPNG(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, d []byte) {
		_ = binary.Write(&b, binary.BigEndian, uint32(len(d)))
		c := append([]byte(typ), d...)
		b.Write(c)
		_ = binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(c))
	}
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 2, 0, 0, 0) // 8-bit RGB
	chunk("IHDR", ihdr)
	// The first 16 rows, all black, deflated: the rest is missing, which
	// a decoder only finds out after allocating for the whole picture.
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	_, _ = zw.Write(make([]byte, 16*(int(w)*3+1)))
	_ = zw.Close()
	chunk("IDAT", z.Bytes())
	chunk("IEND", nil)
	return b.Bytes()
}

// HTML is an HTML page, as an error page saved under a photo's name.
const HTML = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><h1>Bad Gateway</h1><p>The server returned an invalid response.</p></body></html>\n"

// Text is a text file named like a photo.
const Text = "Patient photos to follow.\nLeft forearm, lesion 4 mm, review in 2 weeks.\n"

// Plain is the upright scene as a JPEG with no metadata at all.
func Plain(w, h int) []byte {
	var enc bytes.Buffer
	if err := jpeg.Encode(&enc, Upright(w, h), &jpeg.Options{Quality: 90}); err != nil {
		panic(err)
	}
	return enc.Bytes()
}

// Fixtures are the test files by name (the thumbnailer checks in a copy of
// each under services/thumbnailer/testdata): what each one's bytes must be.
func Fixtures() map[string][]byte {
	return map[string][]byte{
		"gps.jpg":         GPSJPEG(1),
		"gps-orient6.jpg": GPSJPEG(6),
		"truncated.jpg":   Truncated(Plain(640, 480)),
		"page.html":       []byte(HTML),
		"notes.jpg":       []byte(Text),
		"flood.png":       FloodPNG(20000, 20000),
	}
}

// VP8X is the header of an extended WebP of the given canvas size.
func VP8X(w, h int) []byte {
	b := []byte("RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00")
	w, h = w-1, h-1
	return append(b, byte(w), byte(w>>8), byte(w>>16), byte(h), byte(h>>8), byte(h>>16))
}

// JPEGHeader is a JPEG header whose frame claims w×h.
func JPEGHeader(w, h int) []byte {
	return []byte{0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), 1, 1, 0x11, 0, 0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 0x3f, 0}
}
