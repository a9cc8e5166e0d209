package committer

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	_ "image/png" // DecodeConfig of a cleaned PNG
	"io"
	"os"
)

// Cleaning in pure Go, for a photo the thumbnailer has not cleaned yet: what
// reaches ALEX must carry no EXIF, XMP, GPS or comments, and display upright.

var errNotImage = errors.New("not a JPEG or PNG")

// cleaned is a photo cleaned into a temporary file.
type cleaned struct {
	path          string
	size          int64
	contentType   string
	width, height int
}

// cleanPhoto copies r into a new file in dir without metadata, rotating a
// JPEG whose EXIF orientation is not 1. The caller removes the file.
func cleanPhoto(r io.Reader, dir string) (cleaned, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(8)
	f, err := os.CreateTemp(dir, "clinimg-clean-*")
	if err != nil {
		return cleaned{}, fmt.Errorf("temp file: %w", err)
	}
	out := cleaned{path: f.Name()}
	fail := func(err error) (cleaned, error) {
		f.Close()
		os.Remove(out.path)
		return cleaned{}, err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	switch {
	case bytes.HasPrefix(head, []byte{0xFF, 0xD8}):
		out.contentType = "image/jpeg"
		orient, err := stripJPEG(br, w)
		if err != nil {
			return fail(err)
		}
		if err := w.Flush(); err != nil {
			return fail(err)
		}
		if orient > 1 && orient <= 8 {
			if err := reorientJPEG(f, orient); err != nil {
				return fail(err)
			}
		}
	case bytes.HasPrefix(head, []byte("\x89PNG\r\n\x1a\n")):
		out.contentType = "image/png"
		if err := stripPNG(br, w); err != nil {
			return fail(err)
		}
		if err := w.Flush(); err != nil {
			return fail(err)
		}
	default:
		return fail(errNotImage)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	cfg, _, err := image.DecodeConfig(bufio.NewReader(f))
	if err != nil {
		return fail(fmt.Errorf("read cleaned photo: %w", err))
	}
	out.width, out.height = cfg.Width, cfg.Height
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	out.size = st.Size()
	if err := f.Close(); err != nil {
		return fail(err)
	}
	return out, nil
}

// stripJPEG copies a JPEG without its APP1..APP15 and COM segments (EXIF,
// XMP, GPS, maker notes, comments). The ICC profile (APP2 ICC_PROFILE) and
// Adobe's colour-transform flag (APP14 Adobe) stay: they hold no personal
// data and the colours depend on them. It returns the EXIF orientation (1
// when absent).
func stripJPEG(r *bufio.Reader, w io.Writer) (orientation int, err error) {
	orientation = 1
	var soi [2]byte
	if _, err := io.ReadFull(r, soi[:]); err != nil {
		return 0, err
	}
	if _, err := w.Write(soi[:]); err != nil {
		return 0, err
	}
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("jpeg: %w", err)
		}
		if b != 0xFF {
			return 0, errors.New("jpeg: marker expected")
		}
		m, err := r.ReadByte()
		for err == nil && m == 0xFF { // fill bytes
			m, err = r.ReadByte()
		}
		if err != nil {
			return 0, fmt.Errorf("jpeg: %w", err)
		}
		switch {
		case m == 0xD9: // EOI
			_, err := w.Write([]byte{0xFF, m})
			return orientation, err
		case m == 0x01 || (m >= 0xD0 && m <= 0xD7): // no length
			if _, err := w.Write([]byte{0xFF, m}); err != nil {
				return 0, err
			}
			continue
		}
		var lb [2]byte
		if _, err := io.ReadFull(r, lb[:]); err != nil {
			return 0, fmt.Errorf("jpeg: %w", err)
		}
		n := int(binary.BigEndian.Uint16(lb[:]))
		if n < 2 {
			return 0, errors.New("jpeg: bad segment length")
		}
		payload := make([]byte, n-2)
		if _, err := io.ReadFull(r, payload); err != nil {
			return 0, fmt.Errorf("jpeg: %w", err)
		}
		keep := true
		switch {
		case m == 0xE1:
			if o := exifOrientation(payload); o != 0 {
				orientation = o
			}
			keep = false
		case m == 0xE2:
			keep = bytes.HasPrefix(payload, []byte("ICC_PROFILE\x00"))
		case m == 0xEE:
			keep = bytes.HasPrefix(payload, []byte("Adobe"))
		case m >= 0xE3 && m <= 0xEF, m == 0xFE:
			keep = false
		}
		if keep {
			if _, err := w.Write([]byte{0xFF, m, lb[0], lb[1]}); err != nil {
				return 0, err
			}
			if _, err := w.Write(payload); err != nil {
				return 0, err
			}
		}
		if m == 0xDA { // start of scan: the rest is image data
			_, err := io.Copy(w, r)
			return orientation, err
		}
	}
}

// exifOrientation reads tag 0x0112 from an APP1 Exif payload (0 if none).
func exifOrientation(p []byte) int {
	t, ok := bytes.CutPrefix(p, []byte("Exif\x00\x00"))
	if !ok || len(t) < 8 {
		return 0
	}
	var bo binary.ByteOrder
	switch string(t[:2]) {
	case "II":
		bo = binary.LittleEndian
	case "MM":
		bo = binary.BigEndian
	default:
		return 0
	}
	off := int(bo.Uint32(t[4:8]))
	if off < 8 || off+2 > len(t) {
		return 0
	}
	n := int(bo.Uint16(t[off:]))
	for i := 0; i < n; i++ {
		e := off + 2 + 12*i
		if e+12 > len(t) {
			return 0
		}
		if bo.Uint16(t[e:]) == 0x0112 {
			v := int(bo.Uint16(t[e+8:]))
			if v >= 1 && v <= 8 {
				return v
			}
			return 0
		}
	}
	return 0
}

// reorientJPEG decodes the (already stripped) JPEG in f, turns it upright
// and writes it back. Decoding needs the whole picture in memory; it
// happens only for a photo the thumbnailer has not handled.
func reorientJPEG(f *os.File, orientation int) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	src, err := jpeg.Decode(bufio.NewReader(f))
	if err != nil {
		return fmt.Errorf("decode jpeg: %w", err)
	}
	dst := orient(src, orientation)
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if err := jpeg.Encode(w, dst, &jpeg.Options{Quality: 92}); err != nil {
		return fmt.Errorf("encode jpeg: %w", err)
	}
	return w.Flush()
}

// orient applies an EXIF orientation (2-8) so the picture displays upright.
func orient(src image.Image, o int) image.Image {
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	dw, dh := w, h
	if o >= 5 {
		dw, dh = h, w
	}
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var dx, dy int
			switch o {
			case 2:
				dx, dy = w-1-x, y
			case 3:
				dx, dy = w-1-x, h-1-y
			case 4:
				dx, dy = x, h-1-y
			case 5:
				dx, dy = y, x
			case 6:
				dx, dy = h-1-y, x
			case 7:
				dx, dy = h-1-y, w-1-x
			case 8:
				dx, dy = y, w-1-x
			default:
				dx, dy = x, y
			}
			dst.Set(dx, dy, src.At(b.Min.X+x, b.Min.Y+y))
		}
	}
	return dst
}

// PNG chunks that carry metadata rather than pixels.
var pngDrop = map[string]bool{"eXIf": true, "tEXt": true, "zTXt": true, "iTXt": true, "tIME": true}

// stripPNG copies a PNG without its text, time and EXIF chunks.
func stripPNG(r io.Reader, w io.Writer) error {
	var sig [8]byte
	if _, err := io.ReadFull(r, sig[:]); err != nil {
		return err
	}
	if _, err := w.Write(sig[:]); err != nil {
		return err
	}
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return fmt.Errorf("png: %w", err)
		}
		n := int64(binary.BigEndian.Uint32(hdr[:4]))
		typ := string(hdr[4:8])
		if pngDrop[typ] {
			if _, err := io.CopyN(io.Discard, r, n+4); err != nil {
				return fmt.Errorf("png: %w", err)
			}
			continue
		}
		if _, err := w.Write(hdr[:]); err != nil {
			return err
		}
		if _, err := io.CopyN(w, r, n+4); err != nil {
			return fmt.Errorf("png: %w", err)
		}
		if typ == "IEND" {
			return nil
		}
	}
}
