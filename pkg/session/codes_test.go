package session

import (
	"errors"
	"os"
	"regexp"
	"testing"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// Every error a script can answer is a domain error on the Go side, never
// the catch-all: read every fail('CODE') in the scripts and map each.
func TestEveryScriptErrorIsMapped(t *testing.T) {
	src, err := os.ReadFile("scripts.go")
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]bool{}
	for _, m := range regexp.MustCompile(`fail\('([A-Z_]+)'`).FindAllStringSubmatch(string(src), -1) {
		codes[m[1]] = true
	}
	if len(codes) < 20 {
		t.Fatalf("found %d error codes in the scripts; the pattern no longer reads them", len(codes))
	}
	for code := range codes {
		raw := errors.New("ERR CI_" + code + " x1")
		if got := scriptError(events.ImageUploaded, raw); errors.Is(got, raw) {
			t.Errorf("CI_%s is not mapped to a domain error", code)
		}
	}
}
