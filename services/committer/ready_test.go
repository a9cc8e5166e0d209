package committer_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
)

// The committer is ready only while ALEX's token endpoint gives it a token:
// unreachable, or refusing its credentials, it says so on /readyz (503,
// alex_token unavailable) with Redis, NATS and S3 all up.
func TestReadyNeedsALEXToken(t *testing.T) {
	e := newEnv(t, alexsim.Options{})
	tests := []struct {
		name  string
		over  map[string]string
		ready bool
	}{
		{"token endpoint unreachable", map[string]string{"ALEX_OAUTH_TOKEN_URL": "http://" + testenv.FreeAddr(t) + alexsim.TokenPath}, false},
		{"credentials refused", map[string]string{"ALEX_CLIENT_SECRET": "not-the-secret"}, false},
		{"token given", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			over := map[string]string{"OPS_ADDR": testenv.FreeAddr(t)}
			for k, v := range tt.over {
				over[k] = v
			}
			e.startCommitter(over)
			var body map[string]string
			var code int
			// Wait until the connections are up (status is no longer
			// "starting"), then the answer is the token's.
			testenv.Eventually(t, 60*time.Second, "readyz past starting with redis, nats and s3 ok", func() bool {
				resp, err := http.Get("http://" + over["OPS_ADDR"] + "/readyz")
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				body = nil
				if json.NewDecoder(resp.Body).Decode(&body) != nil {
					return false
				}
				code = resp.StatusCode
				return body["redis"] == "ok" && body["nats"] == "ok" && body["s3"] == "ok"
			})
			wantCode, wantToken := http.StatusServiceUnavailable, "unavailable"
			if tt.ready {
				wantCode, wantToken = http.StatusOK, "ok"
			}
			if code != wantCode || body["alex_token"] != wantToken {
				t.Errorf("/readyz = %d %v, want %d with alex_token %s", code, body, wantCode, wantToken)
			}
		})
	}
}
