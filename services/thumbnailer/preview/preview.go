// Package preview turns an uploaded photo into what the screens and the
// record need: a grid preview and a viewer image (JPEG, upright, no
// metadata) and a clean full-size copy without Exif, GPS or XMP. It checks
// that the file really is an accepted image first (JPEG, PNG, WebP or HEIC,
// and not a pixel flood) and says why when it is not.
//
// Pixels are handled by libvips through govips, with shrink-on-load: a 12 MP
// JPEG is decoded at 1/2 or 1/8 scale for the previews, never at full size.
// Call Startup once per process before the first Make.
package preview

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/davidbyttow/govips/v2/vips"

	"github.com/clinicalimages/clinimg/pkg/hygiene"
)

// Settings tune libvips for the whole process.
type Settings struct {
	// Concurrency is libvips' worker threads per operation (default 1: the
	// service runs one photo per core instead, which uses the cores better
	// and bounds memory).
	Concurrency int
	// CacheMem is the operation cache's memory limit in bytes (default 8 MB;
	// each photo is new, so a cache only holds memory).
	CacheMem int
	// Logger receives libvips warnings at debug level (default: discarded).
	Logger *slog.Logger
	// KeepMalloc leaves glibc's allocator as it is. By default Startup
	// limits it to two arenas and returns buffers of 1 MiB or more to the
	// kernel when freed, which keeps the resident size of a process that
	// decodes photo after photo near its working set.
	KeepMalloc bool
}

var (
	startOnce sync.Once
	srgbPath  string
	heicOK    bool
	startErr  error
)

// Startup starts libvips once per process; later calls do nothing and return
// the first call's outcome. libvips cannot be restarted after a shutdown, so
// it is never shut down: it lives as long as the process.
func Startup(s Settings) error {
	startOnce.Do(func() {
		if s.Concurrency <= 0 {
			s.Concurrency = 1
		}
		if s.CacheMem <= 0 {
			s.CacheMem = 8 << 20
		}
		if !s.KeepMalloc {
			tuneMalloc()
		}
		// libvips decodes an image over 100 MB (above ~33 MP in RGB) to a
		// temporary file: patient pixels on disk. Keep them in memory up to
		// 512 MB; the pixel limit keeps a photo well under that.
		if os.Getenv("VIPS_DISC_THRESHOLD") == "" {
			_ = os.Setenv("VIPS_DISC_THRESHOLD", "512m")
		}
		log := s.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		vips.LoggingSettings(func(domain string, level vips.LogLevel, msg string) {
			log.Debug("vips.log", "domain", domain, "level", int(level), "msg", firstLine(msg))
		}, vips.LogLevelWarning)
		vips.Startup(&vips.Config{
			ConcurrencyLevel: s.Concurrency,
			MaxCacheMem:      s.CacheMem,
			MaxCacheSize:     16,
			MaxCacheFiles:    0,
		})
		// Write the sRGB profile file now, while nothing else runs: govips
		// creates it lazily in a package variable.
		srgbPath, startErr = vips.GetSRGBV2MicroICCProfilePath()
		if startErr == nil {
			_, startErr = vips.GetSRGBIEC6196621ICCProfilePath()
		}
		heicOK = vips.IsTypeSupported(vips.ImageTypeHEIF)
	})
	return startErr
}

// HEICSupported reports whether this libvips decodes HEIC (libheif with an
// HEVC decoder). Without it a HEIC photo is rejected with a clear reason.
func HEICSupported() bool { return heicOK }

// Options tune a Maker. Zero values take the defaults named.
type Options struct {
	PreviewSize  int   // long side of the grid preview in pixels (default 320)
	ViewerSize   int   // long side of the viewer image (default 1280)
	MaxPixels    int64 // largest accepted width × height (default 50 000 000)
	Quality      int   // JPEG quality of the previews (default 80)
	CleanQuality int   // JPEG quality of a re-encoded clean copy (default 92)
}

// Maker makes previews and clean copies. It is safe for concurrent use.
type Maker struct{ opt Options }

// New returns a Maker. Startup must have been called.
func New(opt Options) *Maker {
	if opt.PreviewSize <= 0 {
		opt.PreviewSize = 320
	}
	if opt.ViewerSize <= 0 {
		opt.ViewerSize = 1280
	}
	if opt.MaxPixels <= 0 {
		opt.MaxPixels = 50_000_000
	}
	if opt.Quality <= 0 {
		opt.Quality = 80
	}
	if opt.CleanQuality <= 0 {
		opt.CleanQuality = 92
	}
	return &Maker{opt: opt}
}

// Options returns the Maker's options with defaults filled in.
func (m *Maker) Options() Options { return m.opt }

// Result is what Make produced for one photo.
type Result struct {
	hygiene.Header        // the source as sniffed
	Preview        []byte // JPEG, long side at most PreviewSize, upright, no metadata
	Viewer         []byte // JPEG, long side at most ViewerSize, upright, no metadata
	Clean          []byte // JPEG, full size, upright, no Exif/GPS/XMP/IPTC/comments
	// Width and Height are the clean copy's upright size.
	Width, Height int
	// Lossless is true when the clean copy kept the original JPEG's scan
	// data (an upright JPEG): only metadata segments were removed.
	Lossless bool
}

// Make checks src and makes the previews and the clean copy. A file that is
// not an acceptable image gives a *Rejection; Make has no other errors.
func (m *Maker) Make(src []byte) (Result, error) {
	h, p, err := m.check(src)
	if err != nil {
		return Result{}, err
	}
	res := Result{Header: h}
	if res.Viewer, err = m.thumbnail(src, h.Format, m.opt.ViewerSize); err != nil {
		return Result{}, err
	}
	// The grid preview comes from the viewer image: decoding 1280 px at 1/4
	// scale costs a few milliseconds, the original again far more.
	if res.Preview, err = m.thumbnail(res.Viewer, hygiene.JPEG, m.opt.PreviewSize); err != nil {
		return Result{}, err
	}
	if h.Format == hygiene.JPEG && p.orientation <= 1 && h.Components != 4 {
		res.Clean, err = hygiene.StripJPEG(src)
		res.Width, res.Height, res.Lossless = p.width, p.height, true
	} else {
		res.Clean, res.Width, res.Height, err = m.reencode(src, h.Format)
	}
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

// Thumbnail checks src and makes one JPEG whose long side is at most size,
// upright and without metadata: the preview step on its own.
func (m *Maker) Thumbnail(src []byte, size int) ([]byte, error) {
	h, _, err := m.check(src)
	if err != nil {
		return nil, err
	}
	return m.thumbnail(src, h.Format, size)
}

// probed is what libvips reads from the header: the authority on size and
// orientation, since it is what decodes the pixels.
type probed struct {
	width, height, orientation int
}

// check sniffs the format, refuses floods and unsupported formats before any
// decoder runs, then reads the header with libvips.
func (m *Maker) check(src []byte) (hygiene.Header, probed, error) {
	h, err := hygiene.Sniff(src)
	if err != nil {
		return hygiene.Header{}, probed{}, err
	}
	if err := m.checkPixels(h.Width, h.Height); err != nil {
		return hygiene.Header{}, probed{}, err
	}
	if h.Format == hygiene.HEIC && !heicOK {
		return hygiene.Header{}, probed{}, hygiene.Reject(hygiene.CodeUnsupported, "HEIC photos cannot be read on this server; set the camera to JPEG (Most Compatible) and take it again")
	}
	if h.Format == hygiene.JPEG {
		if err := hygiene.ValidateJPEG(src); err != nil {
			return hygiene.Header{}, probed{}, err
		}
	}
	// Loading is lazy: this parses the header only.
	img, err := vips.LoadImageFromBuffer(src, decodeParams(h.Format))
	if err != nil {
		return hygiene.Header{}, probed{}, decodeError(h.Format, err)
	}
	defer img.Close()
	p := probed{width: img.Width(), height: img.Height(), orientation: img.Orientation()}
	if err := m.checkPixels(p.width, p.height); err != nil {
		return hygiene.Header{}, probed{}, err
	}
	return h, p, nil
}

func (m *Maker) checkPixels(w, h int) error {
	if px := int64(w) * int64(h); px > m.opt.MaxPixels {
		return hygiene.Reject(hygiene.CodeTooManyPixels, "image too large: %d×%d pixels (%.0f megapixels; the limit is %.0f)",
			w, h, float64(px)/1e6, float64(m.opt.MaxPixels)/1e6)
	}
	return nil
}

// decodeParams makes a decoder warning an error, so a truncated or damaged
// PNG, WebP or HEIC is refused instead of shown with a grey band. JPEG is
// the exception: its structure is checked by validateJPEG, and libjpeg's
// warnings about harmless oddities (stray bytes before a marker, which some
// cameras and editors write) must not refuse a good photo.
func decodeParams(f hygiene.Format) *vips.ImportParams {
	p := vips.NewImportParams()
	p.FailOnError.Set(f != hygiene.JPEG)
	return p
}

// thumbnail is libvips' thumbnail with shrink-on-load: it autorotates by the
// EXIF orientation, never enlarges, and the result is sRGB JPEG without any
// metadata.
func (m *Maker) thumbnail(src []byte, f hygiene.Format, size int) ([]byte, error) {
	img, err := vips.LoadThumbnailFromBuffer(src, size, size, vips.InterestingNone, vips.SizeDown, decodeParams(f))
	if err != nil {
		return nil, decodeError(f, err)
	}
	defer img.Close()
	return m.encode(img, f, m.opt.Quality, true)
}

// reencode decodes the whole image, turns it upright and writes it as a
// high-quality JPEG without metadata. Huffman optimisation is off: for a
// 12 MP photo it makes libjpeg hold every coefficient of the image (70 MB
// more at peak) to save 2-3 % of the file.
func (m *Maker) reencode(src []byte, f hygiene.Format) ([]byte, int, int, error) {
	img, err := vips.LoadImageFromBuffer(src, decodeParams(f))
	if err != nil {
		return nil, 0, 0, decodeError(f, err)
	}
	defer img.Close()
	if err := img.AutoRotate(); err != nil {
		return nil, 0, 0, decodeError(f, err)
	}
	out, err := m.encode(img, f, m.opt.CleanQuality, false)
	if err != nil {
		return nil, 0, 0, err
	}
	return out, img.Width(), img.Height(), nil
}

// encode converts img to 8-bit sRGB without alpha (white behind transparent
// parts) and writes a baseline JPEG with every metadata block stripped.
func (m *Maker) encode(img *vips.ImageRef, f hygiene.Format, quality int, optimize bool) ([]byte, error) {
	if img.HasICCProfile() || img.Interpretation() == vips.InterpretationCMYK {
		if err := img.TransformICCProfileWithFallback(srgbPath, srgbPath); err != nil {
			return nil, decodeError(f, err)
		}
	}
	if img.HasAlpha() {
		if err := img.Flatten(&vips.Color{R: 255, G: 255, B: 255}); err != nil {
			return nil, decodeError(f, err)
		}
	}
	switch img.Interpretation() {
	case vips.InterpretationSRGB, vips.InterpretationBW:
	default: // 16-bit, Lab, ...: let libvips scale it to 8-bit sRGB
		if err := img.ToColorSpace(vips.InterpretationSRGB); err != nil {
			return nil, decodeError(f, err)
		}
	}
	out, _, err := img.ExportJpeg(&vips.JpegExportParams{
		Quality:        quality,
		StripMetadata:  true,
		OptimizeCoding: optimize,
	})
	if err != nil {
		return nil, decodeError(f, err)
	}
	return out, nil
}

// decodeError turns a libvips failure on the photo's bytes into a rejection.
// The decoder's message goes to Detail, for logs: it means nothing to a GP.
// govips appends a Go stack trace to it; only its first line is kept.
func decodeError(f hygiene.Format, err error) *hygiene.Rejection {
	var r *hygiene.Rejection
	if errors.As(err, &r) {
		return r
	}
	what := "the image"
	if f != "" {
		what = "the " + f.Name()
	}
	msg := firstLine(err.Error())
	low := strings.ToLower(msg)
	if strings.Contains(low, "premature end") || strings.Contains(low, "truncated") || strings.Contains(low, "read error") {
		return &hygiene.Rejection{Code: hygiene.CodeCorrupt, Reason: fmt.Sprintf("corrupt image: %s is truncated or damaged (the upload may have been cut off)", what), Detail: msg}
	}
	return &hygiene.Rejection{Code: hygiene.CodeCorrupt, Reason: fmt.Sprintf("corrupt image: %s cannot be decoded", what), Detail: msg}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// String describes a result for logs.
func (r Result) String() string {
	return fmt.Sprintf("%s %dx%d preview=%dB viewer=%dB clean=%dB lossless=%t",
		r.Header.Format, r.Width, r.Height, len(r.Preview), len(r.Viewer), len(r.Clean), r.Lossless)
}
