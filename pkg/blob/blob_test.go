package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/blob"
)

// Sniff reads the first bytes and the whole size in one request, against a
// server that checks every signature.
func TestSniff(t *testing.T) {
	st, _ := testenv.S3(t)
	ctx := context.Background()
	big := bytes.Repeat([]byte("0123456789"), 1000)
	tests := []struct {
		name     string
		key      string
		body     []byte // nil: no object
		wantSize int64
		wantHead string
		wantErr  error
	}{
		{"photo", "temp/u1/a.jpg", big, 10000, "0123456789012345", nil},
		{"shorter than asked", "temp/u1/b.jpg", []byte("\xff\xd8\xff"), 3, "\xff\xd8\xff", nil},
		{"empty", "temp/u1/c.jpg", []byte{}, 0, "", nil},
		{"missing", "temp/u1/d.jpg", nil, 0, "", blob.ErrNotFound},
		{"key to escape", "temp/u 1/é+x=y&z.jpg", big[:20], 20, "0123456789012345", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.body != nil {
				if err := st.Put(ctx, tc.key, "image/jpeg", bytes.NewReader(tc.body), int64(len(tc.body))); err != nil {
					t.Fatal(err)
				}
			}
			info, head, err := st.Sniff(ctx, tc.key, 16)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if info.Size != tc.wantSize || string(head) != tc.wantHead {
				t.Fatalf("size %d head %q, want %d %q", info.Size, head, tc.wantSize, tc.wantHead)
			}
		})
	}
}

// A wrong key pair is refused with its status, not taken for a missing
// object.
func TestSniffRefused(t *testing.T) {
	_, srv := testenv.S3(t)
	cfg := srv.Config("clinimg-test")
	cfg.SecretKey = "wrong"
	st, err := blob.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = st.Sniff(context.Background(), "temp/u1/a.jpg", 16)
	var se *blob.StatusError
	if !errors.As(err, &se) || se.HTTPStatusCode() != http.StatusForbidden {
		t.Fatalf("err %v, want a 403 StatusError", err)
	}
}

// A presigned GET reads the object, is handed out again while it has
// most of its life left, and stops working once it expires.
func TestPresignGet(t *testing.T) {
	st, _ := testenv.S3(t)
	ctx := context.Background()
	key := "temp/u1/photo 1+é.jpg"
	if err := st.Put(ctx, key, "image/jpeg", strings.NewReader("pixels"), 6); err != nil {
		t.Fatal(err)
	}
	u, err := st.PresignGet(ctx, key, 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got := get(t, u); got != "pixels" {
		t.Fatalf("GET %q, want pixels", got)
	}
	again, err := st.PresignGet(ctx, key, 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if again != u {
		t.Error("a fresh URL was signed while the first had almost all its life left")
	}
	other, err := st.PresignGet(ctx, key, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if other == u {
		t.Error("a URL with another lifetime was reused")
	}
	tampered := strings.Replace(u, "photo", "photp", 1)
	if resp, err := http.Get(tampered); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a URL for another key: %v %v, want 403", err, resp)
	}
}

func get(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET presigned: %d %s", resp.StatusCode, b)
	}
	return string(b)
}
