package hygiene

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// JPEG markers this file names.
const (
	markerSOI  = 0xD8
	markerEOI  = 0xD9
	markerSOS  = 0xDA
	markerAPP0 = 0xE0
	markerAPP1 = 0xE1
	markerAPP2 = 0xE2
	markerAPPE = 0xEE
	markerCOM  = 0xFE
)

// segment is one marker segment of a JPEG: b[start:end] is the marker and its
// payload; for SOS, b[end:scanEnd] is the entropy-coded data that follows.
type segment struct {
	marker     byte
	start, end int
	scanEnd    int
}

// data is the segment's payload after the length field.
func (s segment) data(b []byte) []byte {
	if s.end-s.start <= 4 {
		return nil
	}
	return b[s.start+4 : s.end]
}

// walkJPEG calls fn for each segment of a JPEG after SOI, through EOI, until
// fn asks to stop. It follows entropy-coded data and progressive scans and,
// like libjpeg, skips stray bytes between segments; it fails on a file that
// ends before EOI or breaks the marker syntax. With headerOnly it stops at
// the first SOS, before reading any scan data.
func walkJPEG(b []byte, headerOnly bool, fn func(segment) (stop bool, err error)) error {
	if len(b) < 4 || b[0] != 0xFF || b[1] != markerSOI {
		return corrupt(JPEG, "no start of image")
	}
	i := 2
	for {
		if i >= len(b) {
			return truncated(JPEG)
		}
		if b[i] != 0xFF {
			// Stray bytes between segments: libjpeg skips them with a
			// warning ("extraneous bytes before marker"), and so do we.
			k := bytes.IndexByte(b[i:], 0xFF)
			if k < 0 {
				return truncated(JPEG)
			}
			i += k
		}
		for i+1 < len(b) && b[i+1] == 0xFF { // fill bytes
			i++
		}
		if i+1 >= len(b) {
			return truncated(JPEG)
		}
		s := segment{marker: b[i+1], start: i}
		switch m := s.marker; {
		case m == markerEOI:
			s.end, s.scanEnd = i+2, i+2
			_, err := fn(s)
			return err
		case m == 0x01 || m >= 0xD0 && m <= 0xD7: // TEM, RSTn: no payload
			s.end, s.scanEnd = i+2, i+2
		case m == 0x00 || m == markerSOI:
			return corrupt(JPEG, fmt.Sprintf("unexpected marker 0x%02X at byte %d", m, i))
		default:
			if i+4 > len(b) {
				return truncated(JPEG)
			}
			n := int(binary.BigEndian.Uint16(b[i+2 : i+4]))
			if n < 2 {
				return corrupt(JPEG, fmt.Sprintf("bad segment length at byte %d", i))
			}
			s.end = i + 2 + n
			if s.end > len(b) {
				return truncated(JPEG)
			}
			s.scanEnd = s.end
			if m == markerSOS && headerOnly {
				_, err := fn(s)
				return err
			}
			if m == markerSOS {
				j, err := scanEnd(b, s.end)
				if err != nil {
					return err
				}
				s.scanEnd = j
			}
		}
		stop, err := fn(s)
		if err != nil || stop {
			return err
		}
		i = s.scanEnd
	}
}

// scanEnd finds the marker that ends the entropy-coded data starting at i:
// an 0xFF not followed by a stuffed zero, a restart marker or another 0xFF.
func scanEnd(b []byte, i int) (int, error) {
	for {
		k := bytes.IndexByte(b[i:], 0xFF)
		if k < 0 || i+k+1 >= len(b) {
			return 0, truncated(JPEG)
		}
		j := i + k
		switch n := b[j+1]; {
		case n == 0x00 || n >= 0xD0 && n <= 0xD7:
			i = j + 2
		case n == 0xFF:
			i = j + 1
		default:
			return j, nil
		}
	}
}

// appIdent is the identifier that opens an APPn payload, up to its NUL.
func appIdent(d []byte) string {
	d = d[:min(len(d), 40)]
	if k := bytes.IndexByte(d, 0); k >= 0 {
		d = d[:k]
	}
	// Adobe's APP14 has no NUL after "Adobe".
	if bytes.HasPrefix(d, []byte("Adobe")) {
		return "Adobe"
	}
	return string(d)
}

// ValidateJPEG checks a JPEG's structure from SOI to EOI: a frame, at least
// one scan, and no cut. It is how a truncated upload is told from a photo
// whose decoder merely warns (libjpeg's "extraneous bytes before marker",
// common in phone photos, which a decoder failing on warnings would refuse).
func ValidateJPEG(b []byte) error {
	frames, scans, eoi := 0, 0, false
	err := walkJPEG(b, false, func(s segment) (bool, error) {
		switch {
		case isSOF(s.marker):
			frames++
		case s.marker == markerSOS:
			scans++
		case s.marker == markerEOI:
			eoi = true
		}
		return false, nil
	})
	switch {
	case err != nil:
		return err
	case frames == 0 || scans == 0 || !eoi:
		return corrupt(JPEG, "no image data")
	}
	return nil
}

// StripJPEG removes every metadata segment from a JPEG without touching its
// pixels: the frame, tables and entropy-coded scans are copied byte for byte.
// It drops Exif (with GPS), XMP, IPTC/Photoshop, comments, MPF and every other
// APPn block, the embedded JFIF thumbnail, and anything after the end of the
// image (motion-photo videos, secondary images). It keeps what decoding needs
// and nothing that identifies a person or place: JFIF (without thumbnail),
// Adobe's colour-transform flag, and the ICC colour profile. It fails on a
// file whose marker structure is broken or that ends before EOI.
func StripJPEG(b []byte) ([]byte, error) {
	out := make([]byte, 0, len(b))
	out = append(out, 0xFF, markerSOI)
	frames, scans, eoi := 0, 0, false
	err := walkJPEG(b, false, func(s segment) (bool, error) {
		m := s.marker
		switch {
		case m == markerEOI:
			eoi = true
		case m == markerAPP0:
			d := s.data(b)
			if appIdent(d) == "JFIF" && len(d) >= 14 {
				// JFIF with a zero-size thumbnail: length 16, payload 14.
				out = append(out, 0xFF, markerAPP0, 0, 16)
				out = append(out, d[:12]...)
				out = append(out, 0, 0)
			}
			return false, nil
		case m == markerAPP2:
			if appIdent(s.data(b)) != "ICC_PROFILE" {
				return false, nil
			}
		case m == markerAPPE:
			if appIdent(s.data(b)) != "Adobe" {
				return false, nil
			}
		case m >= markerAPP0 && m <= 0xEF, m == markerCOM:
			return false, nil
		case isSOF(m):
			frames++
		case m == markerSOS:
			scans++
		}
		out = append(out, b[s.start:s.scanEnd]...)
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	if frames == 0 || scans == 0 || !eoi {
		return nil, corrupt(JPEG, "no image data")
	}
	return out, nil
}

// Segment describes one marker segment of a JPEG, for audits and tests.
type Segment struct {
	Marker byte   // 0xE1 for APP1, 0xFE for COM, ...
	Name   string // APP1, COM, SOF0, SOS, DQT, ...
	Ident  string // an APPn payload's identifier: Exif, http://ns.adobe.com/xap/1.0/, ICC_PROFILE, JFIF, MPF, Adobe, Photoshop 3.0
	Size   int    // bytes of the segment, marker included, scan data excluded
}

// Segments lists a JPEG's marker segments in order and counts the bytes after
// its EOI marker.
func Segments(b []byte) (segs []Segment, trailing int, err error) {
	err = walkJPEG(b, false, func(s segment) (bool, error) {
		seg := Segment{Marker: s.marker, Name: markerName(s.marker), Size: s.end - s.start}
		if s.marker >= markerAPP0 && s.marker <= 0xEF {
			seg.Ident = appIdent(s.data(b))
		}
		segs = append(segs, seg)
		if s.marker == markerEOI {
			trailing = len(b) - s.end
		}
		return false, nil
	})
	return segs, trailing, err
}

func markerName(m byte) string {
	switch {
	case m >= markerAPP0 && m <= 0xEF:
		return fmt.Sprintf("APP%d", m-markerAPP0)
	case isSOF(m):
		return fmt.Sprintf("SOF%d", m-0xC0)
	case m >= 0xD0 && m <= 0xD7:
		return fmt.Sprintf("RST%d", m-0xD0)
	}
	switch m {
	case 0xC4:
		return "DHT"
	case 0xCC:
		return "DAC"
	case 0xDB:
		return "DQT"
	case 0xDD:
		return "DRI"
	case 0xDC:
		return "DNL"
	case markerSOS:
		return "SOS"
	case markerEOI:
		return "EOI"
	case markerCOM:
		return "COM"
	}
	return fmt.Sprintf("0x%02X", m)
}
