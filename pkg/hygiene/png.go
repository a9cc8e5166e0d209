package hygiene

import (
	"encoding/binary"
)

// pngDrop are the PNG chunks that carry metadata rather than pixels.
var pngDrop = map[string]bool{"eXIf": true, "tEXt": true, "zTXt": true, "iTXt": true, "tIME": true}

// StripPNG copies a PNG without its text, time and EXIF chunks; every other
// chunk is kept byte for byte, and nothing after IEND. It fails on a file
// that is not a PNG or ends before IEND.
func StripPNG(b []byte) ([]byte, error) {
	if !isPNG(b) {
		return nil, corrupt(PNG, "no PNG signature")
	}
	out := make([]byte, 0, len(b))
	out = append(out, pngMagic...)
	for i := len(pngMagic); ; {
		if i+8 > len(b) {
			return nil, truncated(PNG)
		}
		n := int64(binary.BigEndian.Uint32(b[i : i+4]))
		typ := string(b[i+4 : i+8])
		end := int64(i) + 8 + n + 4 // header, data, CRC
		if n > 1<<31-1 || end > int64(len(b)) {
			return nil, truncated(PNG)
		}
		if !pngDrop[typ] {
			out = append(out, b[i:end]...)
		}
		if typ == "IEND" {
			return out, nil
		}
		i = int(end)
	}
}
