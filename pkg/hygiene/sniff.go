package hygiene

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Format is an accepted image format.
type Format string

// The formats a photo may come in.
const (
	JPEG Format = "jpeg"
	PNG  Format = "png"
	WebP Format = "webp"
	HEIC Format = "heic"
)

// ContentType is the format's media type.
func (f Format) ContentType() string {
	switch f {
	case JPEG:
		return "image/jpeg"
	case PNG:
		return "image/png"
	case WebP:
		return "image/webp"
	case HEIC:
		return "image/heic"
	}
	return ""
}

// Header is what Sniff reads from the first bytes of a file, without decoding
// any pixels.
type Header struct {
	Format Format
	// Width and Height are the stored size, before any EXIF rotation. For
	// HEIC they are the largest image the container declares.
	Width, Height int
	// Orientation is the JPEG's EXIF orientation (1-8), 0 when absent or
	// unreadable. Informational: the decoder's reading is what is applied.
	Orientation int
	// Components is the number of colour components of a JPEG frame (1 grey,
	// 3 YCbCr or RGB, 4 CMYK).
	Components int
}

// Pixels is Width × Height.
func (h Header) Pixels() int64 { return int64(h.Width) * int64(h.Height) }

// Rejection codes: the reason label of the rejected-images metric and the
// machine-readable half of a Rejection.
const (
	CodeNotImage      = "not_image"       // text, HTML, PDF, unknown bytes
	CodeUnsupported   = "unsupported"     // an image format that is not accepted
	CodeCorrupt       = "corrupt"         // truncated or undecodable
	CodeTooManyPixels = "too_many_pixels" // a pixel flood
	CodeTooLarge      = "too_large"       // more bytes than allowed
	CodeMissing       = "missing"         // the uploaded object is gone
	CodeFailed        = "failed"          // retries ran out
)

// Rejection is why a file is not an acceptable photo. Reason is a sentence a
// GP can read; Code is for metrics and tests; Detail is the decoder's own
// message, for logs. Retrying cannot fix it.
type Rejection struct {
	Code   string
	Reason string
	Detail string
}

func (r *Rejection) Error() string { return r.Reason }

// Reject is a Rejection with code and a reason formatted as by fmt.Sprintf.
func Reject(code, format string, a ...any) *Rejection {
	return &Rejection{Code: code, Reason: fmt.Sprintf(format, a...)}
}

// Sniff identifies an accepted image format by its magic bytes and reads its
// dimensions from the header. Anything else gets a *Rejection that says what
// the file looks like instead (text, an HTML page, a PDF, another format).
// It needs only the first few kilobytes of a JPEG, PNG or WebP; a HEIC's
// header may sit further in, so pass the whole file.
func Sniff(b []byte) (Header, error) {
	switch {
	case isJPEG(b):
		return sniffJPEG(b)
	case isPNG(b):
		return sniffPNG(b)
	case isWebP(b):
		return sniffWebP(b)
	case isFtyp(b):
		return sniffFtyp(b)
	}
	return Header{}, classify(b)
}

// Detect names the accepted format the first bytes of a file claim (16 are
// enough), or "" for any other: the magic bytes only, nothing checked
// beyond them. An ISO media file counts as HEIC when its major brand is a
// HEIC or generic HEIF one; Sniff reads further and tells AVIF apart.
func Detect(b []byte) Format {
	switch {
	case isJPEG(b):
		return JPEG
	case isPNG(b):
		return PNG
	case isWebP(b):
		return WebP
	case isFtyp(b) && (heicBrands[string(b[8:12])] || string(b[8:12]) == "mif1" || string(b[8:12]) == "msf1"):
		return HEIC
	}
	return ""
}

var pngMagic = []byte("\x89PNG\r\n\x1a\n")

func isJPEG(b []byte) bool { return len(b) >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF }
func isPNG(b []byte) bool  { return bytes.HasPrefix(b, pngMagic) }
func isWebP(b []byte) bool {
	return len(b) >= 12 && string(b[0:4]) == "RIFF" && string(b[8:12]) == "WEBP"
}
func isFtyp(b []byte) bool { return len(b) >= 12 && string(b[4:8]) == "ftyp" }

// classify names what an unaccepted file is, for a clear rejection.
func classify(b []byte) *Rejection {
	if len(b) == 0 {
		return Reject(CodeNotImage, "not an image: the file is empty")
	}
	head := b[:min(len(b), 1024)]
	switch {
	case bytes.HasPrefix(head, []byte("GIF87a")), bytes.HasPrefix(head, []byte("GIF89a")):
		return Reject(CodeUnsupported, "GIF images are not accepted; send a JPEG, PNG, WebP or HEIC photo")
	case bytes.HasPrefix(head, []byte("II*\x00")), bytes.HasPrefix(head, []byte("MM\x00*")):
		return Reject(CodeUnsupported, "TIFF images are not accepted; send a JPEG, PNG, WebP or HEIC photo")
	case bytes.HasPrefix(head, []byte("BM")) && len(b) > 26:
		return Reject(CodeUnsupported, "BMP images are not accepted; send a JPEG, PNG, WebP or HEIC photo")
	case bytes.HasPrefix(head, []byte("%PDF")):
		return Reject(CodeNotImage, "not an image: the file is a PDF document")
	}
	t := bytes.ToLower(bytes.TrimLeft(bytes.TrimPrefix(head, []byte("\xEF\xBB\xBF")), " \t\r\n"))
	switch {
	case bytes.HasPrefix(t, []byte("<!doctype html")), bytes.HasPrefix(t, []byte("<html")),
		bytes.HasPrefix(t, []byte("<")) && (bytes.Contains(t, []byte("<html")) || bytes.Contains(t, []byte("<body")) || bytes.Contains(t, []byte("<head"))):
		return Reject(CodeNotImage, "not an image: the file is an HTML page")
	case bytes.HasPrefix(t, []byte("<svg")), bytes.HasPrefix(t, []byte("<?xml")):
		return Reject(CodeUnsupported, "SVG and XML files are not accepted; send a JPEG, PNG, WebP or HEIC photo")
	case isText(head):
		return Reject(CodeNotImage, "not an image: the file is text")
	}
	return Reject(CodeNotImage, "not an image: the content is not JPEG, PNG, WebP or HEIC")
}

// isText reports whether b looks like UTF-8 text: valid, and almost no
// control characters other than white space.
func isText(b []byte) bool {
	// A multi-byte rune may be cut at the end of the sample.
	for i := 0; i < utf8.UTFMax && len(b) > 0 && !utf8.Valid(b); i++ {
		b = b[:len(b)-1]
	}
	if len(b) == 0 || !utf8.Valid(b) {
		return false
	}
	ctl := 0
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' && c != '\f' || c == 0x7F {
			ctl++
		}
	}
	return ctl*100 <= len(b)
}

func corrupt(format Format, what string) *Rejection {
	return Reject(CodeCorrupt, "corrupt %s: %s", format.Name(), what)
}

// truncated is the rejection of a file that ends too early, as an upload
// cut off mid-way does.
func truncated(format Format) *Rejection {
	return Reject(CodeCorrupt, "corrupt image: the %s is truncated (the upload may have been cut off)", format.Name())
}

// Name is how the format is written for people: JPEG, PNG, WebP, HEIC.
func (f Format) Name() string {
	switch f {
	case JPEG:
		return "JPEG"
	case PNG:
		return "PNG"
	case WebP:
		return "WebP"
	case HEIC:
		return "HEIC"
	}
	return string(f)
}

func sniffJPEG(b []byte) (Header, error) {
	h := Header{Format: JPEG}
	found := false
	err := walkJPEG(b, true, func(s segment) (bool, error) {
		switch {
		case isSOF(s.marker):
			if found {
				return false, nil
			}
			d := s.data(b)
			if len(d) < 6 {
				return false, corrupt(JPEG, "short frame header")
			}
			h.Height = int(binary.BigEndian.Uint16(d[1:3]))
			h.Width = int(binary.BigEndian.Uint16(d[3:5]))
			h.Components = int(d[5])
			found = true
		case s.marker == markerAPP1:
			if o, ok := exifOrientation(s.data(b)); ok {
				// libjpeg-based decoders keep the last Exif block.
				h.Orientation = o
			}
		case s.marker == markerSOS:
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return Header{}, err
	}
	if !found {
		return Header{}, corrupt(JPEG, "no frame header")
	}
	if h.Width == 0 || h.Height == 0 {
		return Header{}, corrupt(JPEG, "zero width or height")
	}
	return h, nil
}

func isSOF(m byte) bool {
	return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC
}

// exifOrientation reads tag 0x0112 of IFD0 from an APP1 Exif payload.
func exifOrientation(d []byte) (int, bool) {
	if !bytes.HasPrefix(d, []byte("Exif\x00\x00")) {
		return 0, false
	}
	t := d[6:]
	if len(t) < 8 {
		return 0, false
	}
	var bo binary.ByteOrder
	switch string(t[:4]) {
	case "II*\x00":
		bo = binary.LittleEndian
	case "MM\x00*":
		bo = binary.BigEndian
	default:
		return 0, false
	}
	off := int64(bo.Uint32(t[4:8]))
	if off < 8 || off+2 > int64(len(t)) {
		return 0, false
	}
	n := int64(bo.Uint16(t[off:]))
	for i := int64(0); i < n; i++ {
		e := off + 2 + 12*i
		if e+12 > int64(len(t)) {
			return 0, false
		}
		if bo.Uint16(t[e:]) != 0x0112 {
			continue
		}
		var v int
		switch typ := bo.Uint16(t[e+2:]); typ {
		case 3: // SHORT
			v = int(bo.Uint16(t[e+8:]))
		case 4: // LONG
			v = int(bo.Uint32(t[e+8:]))
		default:
			return 0, false
		}
		if v < 1 || v > 8 {
			return 0, false
		}
		return v, true
	}
	return 0, false
}

func sniffPNG(b []byte) (Header, error) {
	// Signature, then IHDR: length 13, "IHDR", width, height, depth, colour type...
	if len(b) < 8+8+13 || string(b[12:16]) != "IHDR" || binary.BigEndian.Uint32(b[8:12]) != 13 {
		return Header{}, corrupt(PNG, "no IHDR chunk")
	}
	w := binary.BigEndian.Uint32(b[16:20])
	hgt := binary.BigEndian.Uint32(b[20:24])
	if w == 0 || hgt == 0 || w > 1<<31-1 || hgt > 1<<31-1 {
		return Header{}, corrupt(PNG, "invalid width or height")
	}
	return Header{Format: PNG, Width: int(w), Height: int(hgt)}, nil
}

func sniffWebP(b []byte) (Header, error) {
	if len(b) < 20 {
		return Header{}, corrupt(WebP, "short header")
	}
	chunk, d := string(b[12:16]), b[20:]
	h := Header{Format: WebP}
	switch chunk {
	case "VP8 ": // lossy: frame tag (3), start code 9d 01 2a, 14-bit width and height
		if len(d) < 10 || d[3] != 0x9d || d[4] != 0x01 || d[5] != 0x2a {
			return Header{}, corrupt(WebP, "bad VP8 frame header")
		}
		h.Width = int(binary.LittleEndian.Uint16(d[6:8]) & 0x3fff)
		h.Height = int(binary.LittleEndian.Uint16(d[8:10]) & 0x3fff)
	case "VP8L": // lossless: signature 0x2f, 14 bits width-1, 14 bits height-1
		if len(d) < 5 || d[0] != 0x2f {
			return Header{}, corrupt(WebP, "bad VP8L header")
		}
		v := binary.LittleEndian.Uint32(d[1:5])
		h.Width = int(v&0x3fff) + 1
		h.Height = int(v>>14&0x3fff) + 1
	case "VP8X": // extended: flags (4), 24-bit canvas width-1, height-1
		if len(d) < 10 {
			return Header{}, corrupt(WebP, "short VP8X header")
		}
		h.Width = int(uint32(d[4])|uint32(d[5])<<8|uint32(d[6])<<16) + 1
		h.Height = int(uint32(d[7])|uint32(d[8])<<8|uint32(d[9])<<16) + 1
	default:
		return Header{}, corrupt(WebP, "unknown chunk")
	}
	if h.Width == 0 || h.Height == 0 {
		return Header{}, corrupt(WebP, "zero width or height")
	}
	return h, nil
}

// heicBrands are the ftyp brands of HEVC-coded HEIF files.
var heicBrands = map[string]bool{"heic": true, "heix": true, "heim": true, "heis": true, "hevc": true, "hevx": true}

// sniffFtyp accepts an ISO-BMFF file whose brands say HEIC and reads the
// largest image size its 'ispe' properties declare.
func sniffFtyp(b []byte) (Header, error) {
	size := int(binary.BigEndian.Uint32(b[0:4]))
	if size < 16 || size > len(b) || size%4 != 0 {
		return Header{}, Reject(CodeNotImage, "not an image: unrecognised ISO media file")
	}
	heic, avif := false, false
	brands := [][]byte{b[8:12]}
	for i := 16; i+4 <= size; i += 4 {
		brands = append(brands, b[i:i+4])
	}
	for _, br := range brands {
		heic = heic || heicBrands[string(br)]
		avif = avif || string(br) == "avif" || string(br) == "avis"
	}
	switch {
	case heic:
	case avif:
		return Header{}, Reject(CodeUnsupported, "AVIF images are not accepted; send a JPEG, PNG, WebP or HEIC photo")
	default:
		return Header{}, Reject(CodeUnsupported, "video and other ISO media files are not accepted; send a JPEG, PNG, WebP or HEIC photo")
	}
	h := Header{Format: HEIC}
	// meta is a full box (4 bytes version and flags) holding iprp > ipco > ispe.
	meta, ok := findBox(b[size:], "meta")
	if !ok || len(meta) < 4 {
		return Header{}, corrupt(HEIC, "no meta box")
	}
	iprp, ok := findBox(meta[4:], "iprp")
	if !ok {
		return Header{}, corrupt(HEIC, "no item properties")
	}
	ipco, ok := findBox(iprp, "ipco")
	if !ok {
		return Header{}, corrupt(HEIC, "no item properties")
	}
	err := eachBox(ipco, func(typ string, d []byte) bool {
		if typ == "ispe" && len(d) >= 12 {
			w, hh := binary.BigEndian.Uint32(d[4:8]), binary.BigEndian.Uint32(d[8:12])
			if int64(w)*int64(hh) > h.Pixels() {
				h.Width, h.Height = int(w), int(hh)
			}
		}
		return true
	})
	if err != nil {
		return Header{}, corrupt(HEIC, err.Error())
	}
	if h.Width == 0 || h.Height == 0 {
		return Header{}, corrupt(HEIC, "no image size")
	}
	return h, nil
}

// findBox returns the payload of the first box of type typ among the boxes in b.
func findBox(b []byte, typ string) ([]byte, bool) {
	var out []byte
	found := false
	_ = eachBox(b, func(t string, d []byte) bool {
		if t == typ {
			out, found = d, true
			return false
		}
		return true
	})
	return out, found
}

// eachBox calls fn with each box's type and payload until fn returns false.
func eachBox(b []byte, fn func(typ string, payload []byte) bool) error {
	for len(b) > 0 {
		if len(b) < 8 {
			return fmt.Errorf("short box")
		}
		size := uint64(binary.BigEndian.Uint32(b[0:4]))
		typ := string(b[4:8])
		hdr := uint64(8)
		switch size {
		case 0: // to the end
			size = uint64(len(b))
		case 1: // 64-bit size follows
			if len(b) < 16 {
				return fmt.Errorf("short box")
			}
			size, hdr = binary.BigEndian.Uint64(b[8:16]), 16
		}
		if size < hdr || size > uint64(len(b)) {
			return fmt.Errorf("box %q overruns its parent", typ)
		}
		if !fn(typ, b[hdr:size]) {
			return nil
		}
		b = b[size:]
	}
	return nil
}
