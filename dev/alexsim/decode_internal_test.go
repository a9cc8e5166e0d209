package alexsim

import (
	"bytes"
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
)

// TestDecodeMediaFastPath checks that a Media parsed with its base64 cut
// out first is the one parsed whole, and that bodies the cut does not
// apply to (escapes, a second "data" key, unknown fields, trailing data)
// are judged exactly as before.
func TestDecodeMediaFastPath(t *testing.T) {
	const head = `{"resourceType":"Media","status":"completed","identifier":[{"system":"https://x","value":"img-1"}],"content":{"contentType":"image/jpeg",`
	data := strings.Repeat("QUJD/+9a", 1000)
	tests := []struct {
		name   string
		body   string
		cut    bool // the fast path applies
		status int
	}{
		{"plain base64", head + `"data":"` + data + `","size":6000}}`, true, 0},
		{"base64 letters that do not decode", head + `"data":"QUJD/+9=QUJD","size":6000}}`, false, 0},
		{"a tab in the string", head + `"data":"QUJD` + "\t" + `"}}`, false, 400},
		{"empty data", head + `"data":"","size":0}}`, true, 0},
		{"escaped slash", head + `"data":"QUJD\/","size":4}}`, false, 0},
		{"newline in string", head + `"data":"QUJD` + "\n" + `"}}`, false, 400},
		{"two data keys", head + `"data":"QUJD","data":"REVG"}}`, false, 0},
		{"unknown field", head + `"data":"QUJD","colour":"red"}}`, true, 400},
		{"data key outside content", `{"resourceType":"Media","data":"QUJD","status":"completed"}`, true, 400},
		{"trailing data", head + `"data":"QUJD"}} {}`, true, 400},
		{"not JSON", `{"data":"QUJD"`, true, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, ok := cutData([]byte(tc.body)); ok != tc.cut {
				t.Fatalf("cut = %v, want %v", ok, tc.cut)
			}
			got, photo, status, code, msg := decodeMedia([]byte(tc.body))
			if status != tc.status {
				t.Fatalf("status %d (%s %s), want %d", status, code, msg, tc.status)
			}
			want, err := decodeStrict([]byte(tc.body))
			if (err == nil) != (status == 0) {
				t.Fatalf("whole parse err %v, fast path status %d", err, status)
			}
			if status == 0 && !reflect.DeepEqual(got, want) {
				t.Fatalf("fast path gave %+v, whole parse %+v", got.Content, want.Content)
			}
			if photo != nil {
				if dec, err := base64.StdEncoding.DecodeString(want.Content.Data); err != nil || !bytes.Equal(photo, dec) {
					t.Fatalf("cut decoded %d bytes, the data decodes to %d (%v)", len(photo), len(dec), err)
				}
			}
		})
	}
}
