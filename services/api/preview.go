package api

import (
	"bytes"
	"errors"
	"image"
	"image/draw"
	"image/jpeg"
	"image/png"

	"github.com/clinicalimages/clinimg/pkg/hygiene"
)

// maxPreviewPixels bounds what previewJPEG decodes (a pixel flood is
// refused before any pixel is read), as the thumbnailer's default does.
const maxPreviewPixels = 50_000_000

// previewJPEG makes a JPEG of a JPEG or PNG photo, upright (EXIF
// orientation applied), its longest side at most size pixels, and without
// any of the original's metadata (only pixels are carried over). Other
// formats (HEIC, WebP) are an error: the API has no decoder for them.
func previewJPEG(b []byte, size int) ([]byte, error) {
	h, err := hygiene.Sniff(b)
	if err != nil {
		return nil, err
	}
	if h.Pixels() > maxPreviewPixels || h.Width <= 0 || h.Height <= 0 {
		return nil, errors.New("preview: too many pixels")
	}
	var src image.Image
	switch h.Format {
	case hygiene.JPEG:
		src, err = jpeg.Decode(bytes.NewReader(b))
	case hygiene.PNG:
		src, err = png.Decode(bytes.NewReader(b))
	default:
		return nil, errors.New("preview: no decoder for " + string(h.Format))
	}
	if err != nil {
		return nil, err
	}
	var img image.Image = shrink(src, size)
	if h.Format == hygiene.JPEG && h.Orientation > 1 {
		img = hygiene.Orient(img, h.Orientation) // on the small picture: cheap
	}
	var out bytes.Buffer
	if err := jpeg.Encode(&out, img, &jpeg.Options{Quality: 82}); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// shrink scales src down to fit size×size, each output pixel the mean of
// the source pixels it covers (a box filter: no aliasing when a 12 MP
// photo becomes a preview). A picture already small enough is copied.
func shrink(src image.Image, size int) *image.RGBA {
	b := src.Bounds()
	rgba := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(rgba, rgba.Bounds(), src, b.Min, draw.Src)
	sw, sh := b.Dx(), b.Dy()
	if sw <= size && sh <= size {
		return rgba
	}
	dw, dh := size, sh*size/sw
	if sh > sw {
		dw, dh = sw*size/sh, size
	}
	dw, dh = max(dw, 1), max(dh, 1)
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for y := range dh {
		y0, y1 := y*sh/dh, max((y+1)*sh/dh, y*sh/dh+1)
		for x := range dw {
			x0, x1 := x*sw/dw, max((x+1)*sw/dw, x*sw/dw+1)
			var r, g, bl, a, n int
			for sy := y0; sy < y1; sy++ {
				row := rgba.Pix[sy*rgba.Stride:]
				for sx := x0; sx < x1; sx++ {
					p := row[sx*4 : sx*4+4]
					r, g, bl, a = r+int(p[0]), g+int(p[1]), bl+int(p[2]), a+int(p[3])
					n++
				}
			}
			o := dst.Pix[y*dst.Stride+x*4:]
			o[0], o[1], o[2], o[3] = uint8(r/n), uint8(g/n), uint8(bl/n), uint8(a/n)
		}
	}
	return dst
}
