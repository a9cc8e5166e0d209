package blob_test

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/blob"
)

// roleCredentials hands out session credentials the way a role does: each
// set lives for lives[i] from when it is fetched, the last one for every
// fetch after. Each set has its own session token, so a URL tells which
// set signed it.
type roleCredentials struct {
	key, secret string
	lives       []time.Duration

	mu      sync.Mutex
	fetches int
}

func (r *roleCredentials) Retrieve(context.Context) (aws.Credentials, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	life := r.lives[min(r.fetches, len(r.lives)-1)]
	r.fetches++
	return aws.Credentials{AccessKeyID: r.key, SecretAccessKey: r.secret, SessionToken: "session-" + strconv.Itoa(r.fetches),
		CanExpire: true, Expires: time.Now().Add(life), Source: "test role"}, nil
}

func (r *roleCredentials) count() int { r.mu.Lock(); defer r.mu.Unlock(); return r.fetches }

// signedWith is the session token and lifetime (seconds) a presigned URL
// carries.
func signedWith(t *testing.T, raw string) (string, int) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	n, err := strconv.Atoi(q.Get("X-Amz-Expires"))
	if err != nil {
		t.Fatalf("%s: no X-Amz-Expires", raw)
	}
	return q.Get("X-Amz-Security-Token"), n
}

// A URL is never signed with credentials that die before it: credentials
// that expire within the URL's lifetime (plus the margin) are renewed
// first, and the renewed ones are used until they in turn come that close.
// When the role only ever gives short credentials, the URL's lifetime is
// cut to what they have left rather than promising more.
func TestPresignOutlivesNoCredentials(t *testing.T) {
	const life = 15 * time.Minute
	_, srv := testenv.S3(t)
	tests := []struct {
		name        string
		lives       []time.Duration
		wantToken   string
		wantFetches int
		maxExpires  time.Duration
	}{
		// Fetched earlier and about to rotate: 10 min left < 15 min URL.
		{"expiring credentials renewed", []time.Duration{10 * time.Minute, 6 * time.Hour}, "session-2", 2, life},
		// Plenty left: one fetch serves every URL.
		{"long credentials kept", []time.Duration{6 * time.Hour}, "session-1", 1, life},
		// A role session shorter than the URL: the URL is cut to fit.
		{"short role session", []time.Duration{5 * time.Minute}, "", 0, 5*time.Minute - blob.CredentialMargin},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role := &roleCredentials{key: srv.AccessKey, secret: srv.SecretKey, lives: tt.lives}
			cfg := srv.Config("any-bucket")
			cfg.AccessKey, cfg.SecretKey, cfg.Credentials, cfg.URLLifetime = "", "", role, life
			st, err := blob.Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var urls []string
			for i := range 3 {
				g, err := st.PresignGet(ctx, "temp/u1/p"+strconv.Itoa(i)+".jpg", life)
				if err != nil {
					t.Fatal(err)
				}
				p, err := st.PresignPut(ctx, "temp/u1/p"+strconv.Itoa(i)+".jpg", "image/jpeg", 10, life)
				if err != nil {
					t.Fatal(err)
				}
				urls = append(urls, g, p)
			}
			for _, u := range urls {
				token, secs := signedWith(t, u)
				if tt.wantToken != "" && token != tt.wantToken {
					t.Errorf("signed with %s, want %s: %s", token, tt.wantToken, strings.SplitN(u, "?", 2)[0])
				}
				if time.Duration(secs)*time.Second > tt.maxExpires {
					t.Errorf("URL valid for %ds; the credentials that signed it allow %s", secs, tt.maxExpires)
				}
			}
			if tt.wantFetches > 0 && role.count() != tt.wantFetches {
				t.Errorf("%d credential fetches for 6 URLs, want %d", role.count(), tt.wantFetches)
			}
		})
	}
}
