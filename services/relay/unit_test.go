package relay

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		check   func(Config) string
		wantErr string
	}{
		{"sse defaults", map[string]string{"REALTIME_SIGNING_KEY": "local:s"}, func(c Config) string {
			return cmp.Diff([]any{realtime.ModeSSE, ":8081", []string{"*"}, 15 * time.Second, 256, ":9092", "local"},
				[]any{c.Realtime.Mode, c.Addr, c.AllowedOrigins, c.Heartbeat, c.SubscriberBuffer, c.Common.OpsAddr, c.Realtime.Key.Name})
		}, ""},
		{"ably with the stand-in", map[string]string{"ABLY_API_KEY": "a.b:c", "ABLY_ENDPOINT": "http://127.0.0.1:9999",
			"ABLY_PUBLISH_TIMEOUT": "2s", "RELAY_ALLOWED_ORIGINS": "https://a.example, https://b.example"}, func(c Config) string {
			return cmp.Diff([]any{realtime.ModeAbly, "http://127.0.0.1:9999", 2 * time.Second, 50, 16, []string{"https://a.example", "https://b.example"}},
				[]any{c.Realtime.Mode, c.AblyEndpoint, c.PublishTimeout, c.ChannelRate, c.Publishers, c.AllowedOrigins})
		}, ""},
		{"sse without a key", map[string]string{}, nil, "REALTIME_SIGNING_KEY is required"},
		{"every problem at once", map[string]string{"ABLY_API_KEY": "a.b:c", "ABLY_ENDPOINT": "ftp://x", "ABLY_CHANNEL_RATE": "0", "RELAY_HEARTBEAT": "soon"},
			nil, "ABLY_CHANNEL_RATE must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ConfigFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := tt.check(c); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
	_, err := ConfigFromEnv(func(k string) string {
		return map[string]string{"ABLY_API_KEY": "a.b:c", "ABLY_ENDPOINT": "ftp://x", "ABLY_CHANNEL_RATE": "0", "RELAY_HEARTBEAT": "soon"}[k]
	})
	for _, want := range []string{"ABLY_ENDPOINT", "ABLY_CHANNEL_RATE", "RELAY_HEARTBEAT"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

func TestAblyEndpoint(t *testing.T) {
	tests := []struct {
		in       string
		wantHost string
		wantTLS  bool
		wantErr  bool
	}{
		{"127.0.0.1:8080", "127.0.0.1:8080", true, false},
		{"http://127.0.0.1:8080", "127.0.0.1:8080", false, false},
		{"https://rest.example.com", "rest.example.com", true, false},
		{"ftp://x", "", false, true},
	}
	for _, tt := range tests {
		host, tls, err := ablyEndpoint(tt.in, true)
		if (err != nil) != tt.wantErr || host != tt.wantHost || tls != tt.wantTLS {
			t.Errorf("ablyEndpoint(%q) = %q, %v, %v", tt.in, host, tls, err)
		}
	}
}

func TestToBrowser(t *testing.T) {
	at := time.Date(2026, 11, 23, 4, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		typ      events.Type
		data     string
		wantOK   bool
		wantName string
		wantData string
	}{
		{"image with presigned urls", events.ImageUploaded,
			`{"sessionId":"s","version":9007199254740993,"imageCount":1,"image":{"id":"i","s3Url":"https://x?sig","previewUrl":"p","viewerUrl":"v","metadata":{"notes":"own screen"}}}`,
			true, "image-uploaded", `{"image":{"id":"i","metadata":{"notes":"own screen"}},"imageCount":1,"sessionId":"s","version":9007199254740993}`},
		{"commit requested is commit-started", events.CommitRequested, `{"commitId":"c","errors":[{"imageId":"a","error":"x"}]}`,
			true, "commit-started", `{"commitId":"c","errors":[{"error":"x","imageId":"a"}]}`},
		{"not for browsers", events.Type("audit.logged"), `{}`, false, "", ""},
		{"oversized", events.ImageUpdated, `{"sessionId":"s","version":3,"image":{"id":"i","metadata":{"notes":"` + strings.Repeat("x", 70*1024) + `"}}}`,
			true, "image-updated", `{"imageId":"i","resync":true,"sessionId":"s","version":3}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := events.Event{SpecVersion: "1.0", ID: "e1", Type: tt.typ, Time: at, Subject: "u1", Data: json.RawMessage(tt.data)}
			bm, ok, err := toBrowser(ev)
			if err != nil || ok != tt.wantOK {
				t.Fatalf("ok %v err %v", ok, err)
			}
			if !ok {
				return
			}
			got := []any{bm.EventID, bm.Name, bm.Channel, bm.Time, string(bm.Data)}
			want := []any{"e1", tt.wantName, "session:u1", at.UnixMilli(), tt.wantData}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}
