package phototest

import (
	"bytes"
	"encoding/binary"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
)

var update = flag.Bool("update", false, "rewrite services/thumbnailer/testdata from the generators")

// TestFixtures keeps the checked-in test files equal to what the generators
// make (go test ./internal/phototest -update rewrites them), and checks
// that each one is what its name promises.
func TestFixtures(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata")
	for name, want := range hygienetest.Fixtures() {
		path := filepath.Join(dir, name)
		if *update {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./internal/phototest -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from its generator (run go test ./internal/phototest -update)", name)
		}
	}
	f := hygienetest.Fixtures()
	for _, name := range []string{"gps.jpg", "gps-orient6.jpg"} {
		if !hygienetest.GPSOf(f[name]) {
			t.Errorf("%s has no GPS IFD", name)
		}
		for _, s := range hygienetest.Secrets {
			if !bytes.Contains(f[name], []byte(s)) {
				t.Errorf("%s lacks planted secret %q", name, s)
			}
		}
	}
	fl := f["flood.png"]
	if w, h := binary.BigEndian.Uint32(fl[16:20]), binary.BigEndian.Uint32(fl[20:24]); w != 20000 || h != 20000 || len(fl) > 4096 {
		t.Errorf("flood.png claims %dx%d in %d bytes, want 20000x20000 in under 4 KiB", w, h, len(fl))
	}
}

func TestSharedDirFindsTheOrientationSet(t *testing.T) {
	for i := range 9 {
		b := hygienetest.Shared(t, "exif-orientation/Landscape_"+string(rune('0'+i))+".jpg")
		if len(b) < 1000 || b[0] != 0xFF || b[1] != 0xD8 {
			t.Errorf("Landscape_%d.jpg is not a JPEG", i)
		}
	}
}
