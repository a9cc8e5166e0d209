// Package phototest holds what the thumbnailer's tests need beyond
// pkg/hygiene/hygienetest's photos: libvips picture comparison and peak
// memory.
package phototest

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"strings"

	"github.com/davidbyttow/govips/v2/vips"
)

// ResetPeakRSS starts a new peak-memory measurement of this process (Linux:
// /proc/self/clear_refs). It reports whether the kernel allowed it.
func ResetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// PeakRSS is the process's peak resident memory in MiB since the last
// ResetPeakRSS (VmHWM), or 0 where /proc is not available.
func PeakRSS() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%f kB", &kb); err == nil {
				return kb / 1024
			}
		}
	}
	return 0
}

// Diff is the root-mean-square difference of two encoded pictures of the
// same size, per 8-bit channel (0 identical, 255 opposite), computed by
// libvips (so it stays fast under the race detector). libvips must be
// started.
func Diff(a, b []byte) (float64, error) {
	ia, err := vips.NewImageFromBuffer(a)
	if err != nil {
		return 0, err
	}
	defer ia.Close()
	ib, err := vips.NewImageFromBuffer(b)
	if err != nil {
		return 0, err
	}
	defer ib.Close()
	if ia.Width() != ib.Width() || ia.Height() != ib.Height() || ia.Bands() != ib.Bands() {
		return math.Inf(1), fmt.Errorf("sizes differ: %dx%dx%d and %dx%dx%d", ia.Width(), ia.Height(), ia.Bands(), ib.Width(), ib.Height(), ib.Bands())
	}
	if err := ib.Linear1(-1, 0); err != nil {
		return 0, err
	}
	if err := ia.Add(ib); err != nil { // a - b
		return 0, err
	}
	d, err := ia.Copy()
	if err != nil {
		return 0, err
	}
	defer d.Close()
	if err := ia.Multiply(d); err != nil {
		return 0, err
	}
	ms, err := ia.Average()
	if err != nil {
		return 0, err
	}
	return math.Sqrt(ms), nil
}

// PNG encodes img losslessly, for comparing with Diff.
func PNG(img image.Image) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		panic(err)
	}
	return b.Bytes()
}
