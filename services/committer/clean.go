package committer

import (
	"bytes"
	"crypto/sha1"
	"errors"
	"fmt"
	"hash"
	"image"
	"image/jpeg"
	_ "image/png" // DecodeConfig of a cleaned PNG
	"io"
	"os"

	"github.com/clinicalimages/clinimg/pkg/hygiene"
)

// Cleaning in pure Go (pkg/hygiene), for a photo the thumbnailer has not
// cleaned yet: what reaches ALEX must carry no EXIF, XMP, GPS or comments,
// and display upright.

var errNotImage = errors.New("not a JPEG or PNG")

// maxCleanBytes bounds the original read into memory to clean it: above the
// API's largest upload (20 MiB by default), so only a file no upload could
// leave is refused.
const maxCleanBytes = 64 << 20

// cleaned is a photo cleaned into a temporary file, with the SHA-1 of
// what was written.
type cleaned struct {
	path          string
	size          int64
	sha1          hash.Hash
	contentType   string
	width, height int
}

// cleanPhoto copies r into a new file in dir without metadata, rotating a
// JPEG whose EXIF orientation is not 1. The caller removes the file. It
// holds the photo in memory: it runs only for a photo the thumbnailer has
// not handled, and a rotation decodes the whole picture anyway.
func cleanPhoto(r io.Reader, dir string) (cleaned, error) {
	src, err := io.ReadAll(io.LimitReader(r, maxCleanBytes+1))
	if err != nil {
		return cleaned{}, fmt.Errorf("read photo: %w", err)
	}
	if len(src) > maxCleanBytes {
		return cleaned{}, fmt.Errorf("photo over %d bytes", maxCleanBytes)
	}
	out, err := clean(src)
	if err != nil {
		return cleaned{}, err
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(out))
	if err != nil {
		return cleaned{}, fmt.Errorf("read cleaned photo: %w", err)
	}
	f, err := os.CreateTemp(dir, "clinimg-clean-*")
	if err != nil {
		return cleaned{}, fmt.Errorf("temp file: %w", err)
	}
	_, err = f.Write(out)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return cleaned{}, fmt.Errorf("write cleaned photo: %w", err)
	}
	h := sha1.New()
	h.Write(out)
	return cleaned{path: f.Name(), size: int64(len(out)), sha1: h, contentType: hygiene.Detect(out).ContentType(),
		width: cfg.Width, height: cfg.Height}, nil
}

// clean is src without metadata and upright; errNotImage for anything but a
// JPEG or PNG (HEIC and WebP only the thumbnailer can clean).
func clean(src []byte) ([]byte, error) {
	switch hygiene.Detect(src) {
	case hygiene.PNG:
		return hygiene.StripPNG(src)
	case hygiene.JPEG:
	default:
		return nil, errNotImage
	}
	h, err := hygiene.Sniff(src)
	if err != nil {
		return nil, err
	}
	out, err := hygiene.StripJPEG(src)
	if err != nil || h.Orientation <= 1 {
		return out, err
	}
	img, err := jpeg.Decode(bytes.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("decode jpeg: %w", err)
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, hygiene.Orient(img, h.Orientation), &jpeg.Options{Quality: 92}); err != nil {
		return nil, fmt.Errorf("encode jpeg: %w", err)
	}
	return b.Bytes(), nil
}
