package fhir

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestEncodeStreamsExactly(t *testing.T) {
	for _, size := range []int{1, 2, 3, 4, 1000, 32<<10 + 7, 1 << 20} {
		data := bytes.Repeat([]byte{0xAB, 0x01, 0xFF}, size/3+1)[:size]
		m := NewMedia(Photo{ImageID: "img-1", PatientID: "p1", ContentType: "image/jpeg", Notes: `quote " and CLINIMGDATA`})
		enc, err := Encode(m, io.NopCloser(bytes.NewReader(data)), int64(size))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(enc.Body)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(raw)) != enc.Length {
			t.Fatalf("size %d: body %d bytes, Length says %d", size, len(raw), enc.Length)
		}
		var got Media
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		sum := sha1.Sum(data)
		want := Attachment{ContentType: "image/jpeg", Data: base64.StdEncoding.EncodeToString(data), Size: int64(size), Hash: base64.StdEncoding.EncodeToString(sum[:])}
		if diff := cmp.Diff(want, *got.Content); diff != "" {
			t.Errorf("size %d (-want +got):\n%s", size, diff)
		}
		if got.Note[0].Text != `quote " and CLINIMGDATA` {
			t.Errorf("note changed: %q", got.Note[0].Text)
		}
		h, err := enc.Hash()
		if err != nil || h != want.Hash {
			t.Errorf("Hash() = %q, %v", h, err)
		}
	}
}

// A hash the caller gives is the one sent, and the photo is not hashed
// again: the committer hashed it as it fetched it, before recording it as
// being sent.
func TestEncodeWritesAGivenHash(t *testing.T) {
	data := bytes.Repeat([]byte{0xAB, 0x01, 0xFF}, 100_000)
	sum := sha1.Sum(data)
	for _, tc := range []struct {
		name, given, want string
	}{
		{"its own", base64.StdEncoding.EncodeToString(sum[:]), base64.StdEncoding.EncodeToString(sum[:])},
		// Not computed: a hash of other bytes is written as given.
		{"another's", "2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "2jmj7l5rSw0yVb/vlWAYkK/YBwk="},
	} {
		m := NewMedia(Photo{ImageID: "img-1", PatientID: "p1", ContentType: "image/jpeg", Hash: tc.given})
		enc, err := Encode(m, io.NopCloser(bytes.NewReader(data)), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(enc.Body)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(raw)) != enc.Length {
			t.Fatalf("%s: body %d bytes, Length says %d", tc.name, len(raw), enc.Length)
		}
		var got Media
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		want := Attachment{ContentType: "image/jpeg", Data: base64.StdEncoding.EncodeToString(data), Size: int64(len(data)), Hash: tc.want}
		if diff := cmp.Diff(want, *got.Content); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
		if h, err := enc.Hash(); err != nil || h != tc.want {
			t.Errorf("%s: Hash() = %q, %v", tc.name, h, err)
		}
	}
	m := NewMedia(Photo{ImageID: "img-1", Hash: "not a hash"})
	if _, err := Encode(m, io.NopCloser(bytes.NewReader(data)), int64(len(data))); err == nil {
		t.Error("a content.hash that is no SHA-1 was sent")
	}
}

func TestEncodeShortPhotoFails(t *testing.T) {
	enc, err := Encode(NewMedia(Photo{ImageID: "x"}), io.NopCloser(strings.NewReader("abc")), 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(enc.Body); err == nil {
		t.Fatal("a photo shorter than its size was sent whole")
	}
}

func TestNewMedia(t *testing.T) {
	at := time.Date(2026, 11, 23, 9, 30, 0, 0, time.FixedZone("NZDT", 13*3600))
	tests := []struct {
		name string
		p    Photo
		site *CodeableConcept
		view *CodeableConcept
	}{
		{"coded site, left, anterior",
			Photo{BodySite: "14975008", BodySiteDisplay: "Forearm structure", Laterality: "left", ViewType: "anterior"},
			&CodeableConcept{Coding: []Coding{{System: SNOMED, Code: "14975008", Display: "Forearm structure"}, {System: SNOMED, Code: "7771000", Display: "Left"}}, Text: "Forearm structure (left)"},
			&CodeableConcept{Coding: []Coding{{System: SNOMED, Code: "255549009", Display: "Anterior"}}, Text: "Anterior"}},
		{"free-text site, bilateral, close-up",
			Photo{BodySite: "left_arm", Laterality: "bilateral", ViewType: "close-up"},
			&CodeableConcept{Coding: []Coding{{System: SNOMED, Code: "51440002", Display: "Right and left"}}, Text: "left arm (right and left)"},
			&CodeableConcept{Coding: []Coding{{System: PhotoViewSystem, Code: "close-up", Display: "Close-up"}}, Text: "Close-up"}},
		{"nothing coded", Photo{}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.p.ImageID, tt.p.PatientID, tt.p.EncounterID, tt.p.CapturedAt = "img-1", "p1", "e1", at
			m := NewMedia(tt.p)
			if diff := cmp.Diff(tt.site, m.BodySite); diff != "" {
				t.Errorf("bodySite (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.view, m.View); diff != "" {
				t.Errorf("view (-want +got):\n%s", diff)
			}
			got := []string{m.Status, m.Subject.Reference, m.Encounter.Reference, m.CreatedDateTime, m.IdentifierValue(DefaultImageIDNS)}
			want := []string{"completed", "Patient/p1", "Encounter/e1", "2026-11-22T20:30:00Z", "img-1"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseCapabilities(t *testing.T) {
	c, err := ParseCapabilities(" delete, Search ,conditional-create")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Capabilities{Delete: true, Search: true, ConditionalCreate: true}, c); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := c.String(); got != "conditional-create,delete,search" {
		t.Errorf("String() = %q", got)
	}
	if _, err := ParseCapabilities("teleport"); err == nil {
		t.Error("unknown capability accepted")
	}
}

func TestParseLocation(t *testing.T) {
	tests := []struct{ in, id, vid string }{
		{"https://alexapi.medtechglobal.com/FHIR/Media/abc/_history/2", "abc", "2"},
		{"Media/abc", "abc", ""},
		{"", "", ""},
		{"https://x/FHIR/Patient/1", "", ""},
	}
	for _, tt := range tests {
		id, vid := parseLocation(tt.in)
		if diff := cmp.Diff([]string{tt.id, tt.vid}, []string{id, vid}); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestRedactPath(t *testing.T) {
	for in, want := range map[string]string{
		"/FHIR/Patient/pat-1234": "/FHIR/Patient/{id}",
		"/FHIR/Media/abc":        "/FHIR/Media/abc",
	} {
		if got := redactPath(in); got != want {
			t.Errorf("redactPath(%q) = %q, want %q", in, got, want)
		}
	}
}
