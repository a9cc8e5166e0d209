// Package thumbnailer turns each uploaded photo into what the screens and the
// record need. It takes image.uploaded from a durable JetStream pull
// consumer, reads the photo from S3 (size-capped), checks that it really is
// an accepted image, and writes next to the original a grid preview
// ({id}.preview.jpg, about 320 px), a viewer image ({id}.viewer.jpg, about
// 1280 px) and a clean full-size copy ({id}.clean.jpg) without Exif, GPS or
// XMP, all upright. It then records the result on the session in one atomic
// step that emits image.processed or image.rejected through the session
// outbox, which this service also publishes.
//
// Pixels go through libvips (package preview) with shrink-on-load, one photo
// per worker and one libvips thread per photo, so memory stays bounded by
// the worker count.
package thumbnailer

import (
	"cmp"
	"log/slog"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// Config is everything the thumbnailer needs. Build it with ConfigFromEnv.
type Config struct {
	Common config.Common

	// Workers is how many photos are processed at once
	// (THUMBNAIL_WORKERS, default GOMAXPROCS: the container's CPU limit, which Go reads from the cgroup, not the node's CPUs).
	Workers int
	// MaxBytes is the largest photo read from S3 (THUMBNAIL_MAX_BYTES,
	// default 25 MiB); a bigger one is rejected unread.
	MaxBytes int64
	// MaxPixels is the largest accepted width × height
	// (THUMBNAIL_MAX_PIXELS, default 50 000 000).
	MaxPixels int64
	// PreviewSize is the grid preview's long side in pixels (PREVIEW_SIZE, 320).
	PreviewSize int
	// ViewerSize is the viewer image's long side (VIEWER_SIZE, 1280).
	ViewerSize int
	// PreviewQuality is the previews' JPEG quality (PREVIEW_QUALITY, 80).
	PreviewQuality int
	// CleanQuality is the JPEG quality of a clean copy that has to be
	// re-encoded (a rotated or non-JPEG photo) (CLEAN_QUALITY, 92).
	CleanQuality int

	// Logger is the service's logger (nil: JSON on stderr at LOG_LEVEL).
	Logger *slog.Logger
	// Registry receives the metrics (nil: a new one with Go and process
	// collectors).
	Registry *prometheus.Registry
}

// Defaults.
const (
	DefaultMaxBytes  = 25 << 20
	DefaultMaxPixels = 50_000_000
)

// ConfigFromEnv reads the configuration, reporting every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	r := config.New(getenv)
	c := Config{
		Common:         r.ReadCommon(":9094"),
		Workers:        r.Int("THUMBNAIL_WORKERS", runtime.GOMAXPROCS(0)),
		MaxBytes:       int64(r.Int("THUMBNAIL_MAX_BYTES", DefaultMaxBytes)),
		MaxPixels:      int64(r.Int("THUMBNAIL_MAX_PIXELS", DefaultMaxPixels)),
		PreviewSize:    r.Int("PREVIEW_SIZE", 320),
		ViewerSize:     r.Int("VIEWER_SIZE", 1280),
		PreviewQuality: r.Int("PREVIEW_QUALITY", 80),
		CleanQuality:   r.Int("CLEAN_QUALITY", 92),
	}
	if c.Workers < 1 || c.Workers > 256 {
		r.Fail("THUMBNAIL_WORKERS: %d is not between 1 and 256", c.Workers)
	}
	if c.MaxBytes < 1024 {
		r.Fail("THUMBNAIL_MAX_BYTES: %d is below 1024", c.MaxBytes)
	}
	if c.MaxPixels < 1 {
		r.Fail("THUMBNAIL_MAX_PIXELS: %d is not positive", c.MaxPixels)
	}
	if c.PreviewSize < 16 || c.PreviewSize > 4096 {
		r.Fail("PREVIEW_SIZE: %d is not between 16 and 4096", c.PreviewSize)
	}
	if c.ViewerSize < 16 || c.ViewerSize > 8192 {
		r.Fail("VIEWER_SIZE: %d is not between 16 and 8192", c.ViewerSize)
	}
	if c.PreviewSize > c.ViewerSize {
		r.Fail("PREVIEW_SIZE (%d) is larger than VIEWER_SIZE (%d)", c.PreviewSize, c.ViewerSize)
	}
	if c.PreviewQuality < 1 || c.PreviewQuality > 100 {
		r.Fail("PREVIEW_QUALITY: %d is not between 1 and 100", c.PreviewQuality)
	}
	if c.CleanQuality < 1 || c.CleanQuality > 100 {
		r.Fail("CLEAN_QUALITY: %d is not between 1 and 100", c.CleanQuality)
	}
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Consumer is the thumbnailer's JetStream consumer: a claim outlives a
// crashed worker by AckWait (NATS_ACK_WAIT, default 1m); a photo that fails
// ten deliveries is dead-lettered and marked rejected.
func (c Config) Consumer() events.Consumer {
	return events.Consumer{Name: events.ConsumerThumbnailer, Type: events.ImageUploaded,
		AckWait: cmp.Or(c.Common.AckWait, time.Minute), MaxDeliver: 10, MaxAckPending: 256}
}
