package api

import (
	"strings"
	"testing"
	"unicode"

	"golang.org/x/text/unicode/norm"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// FuzzDecodeRequests feeds arbitrary bytes to every request decoder and the
// checks behind them: nothing panics, and whatever is accepted is valid.
func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{
		`{"patientId":"12345","encounterId":"enc_789"}`,
		`{"fileName":"a.jpg","contentType":"image/jpeg","contentLength":1000}`,
		`{"imageId":"img_a1b2c3d4","s3Key":"temp/user_abc123/img_a1b2c3d4.jpg","source":"mobile","metadata":{"bodySite":"left_arm","laterality":"left","viewType":"anterior"}}`,
		`{"metadata":{"notes":"x"}}`, `{"bodySite":"368208006","notes":""}`,
		`{"contentType":7}`, `{"a":1}{}`, `[]`, `null`, `"\u0000"`, `{"notes":"a\u202eb\u0301"}`, `{"bodySite":"14975008","bodySiteDisplay":"Foot"}`, `{"notes":"` + strings.Repeat("é", 3000) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var st startRequest
		if decodeBytes(raw, &st) == nil {
			_ = fhirID.MatchString(st.PatientID)
		}
		var pr presignRequest
		_ = decodeBytes(raw, &pr)
		var rr recordRequest
		if decodeBytes(raw, &rr) == nil {
			if ct, err := checkKey("user_abc123", rr.S3Key); err == nil {
				if ct == "" || !strings.HasPrefix(rr.S3Key, "temp/user_abc123/") || strings.Contains(rr.S3Key, "..") {
					t.Fatalf("accepted key %q as %q", rr.S3Key, ct)
				}
			}
			if rr.Metadata != nil {
				if p, err := cleanMetadata(patchOf(*rr.Metadata)); err == nil {
					checkClean(t, p)
				}
			}
		}
		var ur updateRequest
		if decodeBytes(raw, &ur) == nil {
			if p, err := cleanMetadata(ur.MetadataPatch); err == nil {
				checkClean(t, p)
				if p.Laterality != nil && !validLaterality(*p.Laterality) {
					t.Fatalf("accepted laterality %q", *p.Laterality)
				}
			}
		}
	})
}

// checkClean fails t unless p's text is NFC without controls other than
// newline and tab or any bidi control, and its display is the code's.
func checkClean(t *testing.T, p session.MetadataPatch) {
	t.Helper()
	for _, v := range []*string{p.Notes, p.BodySite} {
		if v == nil {
			continue
		}
		if !norm.NFC.IsNormalString(*v) {
			t.Fatalf("accepted text not in NFC: %q", *v)
		}
		for _, r := range *v {
			if _, bidi := bidiControls[r]; bidi || unicode.IsControl(r) && r != '\n' && r != '\t' {
				t.Fatalf("accepted %U in %q", r, *v)
			}
		}
	}
	if p.BodySite == nil && p.BodySiteDisplay != nil || p.BodySite != nil && (p.BodySiteDisplay == nil || *p.BodySiteDisplay != bodySiteDisplay[*p.BodySite]) {
		t.Fatalf("display %v not derived from site %v", p.BodySiteDisplay, p.BodySite)
	}
}

// FuzzCheckKey: no key outside temp/{userId}/ is ever accepted.
func FuzzCheckKey(f *testing.F) {
	for _, s := range []string{"temp/u1/a.jpg", "temp/u2/a.jpg", "temp/u1/../u2/a.jpg", "temp/u1/a.jpg/../../x", "/temp/u1/a.jpg", "temp/u1/a.JPG", "temp/u1//a.png"} {
		f.Add("u1", s)
	}
	f.Fuzz(func(t *testing.T, user, key string) {
		if _, err := checkKey(user, key); err == nil {
			if !strings.HasPrefix(key, "temp/"+user+"/") || strings.Count(key, "/") != 2 || strings.Contains(key, "..") {
				t.Fatalf("accepted %q for %q", key, user)
			}
		}
	})
}
