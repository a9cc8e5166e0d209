package hygiene

import "image"

// Orient returns src as it displays under EXIF orientation o (1-8): turned
// and mirrored upright. Orientation 1, or a value outside 1-8, copies src as
// it is. It holds the whole picture in memory twice; callers that can use a
// decoder's shrink-on-load (the thumbnailer's libvips) rotate there instead.
func Orient(src image.Image, o int) *image.RGBA {
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	dw, dh := w, h
	if o >= 5 && o <= 8 {
		dw, dh = h, w
	}
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			dx, dy := x, y
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
			}
			dst.Set(dx, dy, src.At(b.Min.X+x, b.Min.Y+y))
		}
	}
	return dst
}

// Inverse is the orientation that undoes o: each of the eight is its own
// inverse but for the quarter turns, 6 and 8. Orient(Orient(img, o),
// Inverse(o)) is img; tests use it to store an upright scene as a camera
// would.
func Inverse(o int) int {
	switch o {
	case 6:
		return 8
	case 8:
		return 6
	}
	return o
}
