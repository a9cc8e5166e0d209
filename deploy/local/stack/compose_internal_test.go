package stack

import "testing"

func TestRewrite(t *testing.T) {
	a := addresses{
		internal:  map[string]string{"redis:6379": "127.0.0.1:1001", "minio:9000": "127.0.0.1:1002", "nats:4222": "127.0.0.1:1003"},
		published: map[string]string{"9000": "127.0.0.1:1002", "8080": "127.0.0.1:1004"},
		hosts:     []string{"127.0.0.1", "lan.example"},
		natsURLs:  "nats://127.0.0.1:1003,nats://127.0.0.1:1013",
		natsHost:  "nats",
	}
	tests := []struct {
		key, in, want string
		fail          bool
	}{
		{"REDIS_URL", "redis://redis:6379/0", "redis://127.0.0.1:1001/0", false},
		{"NATS_URL", "nats://nats:4222", "nats://127.0.0.1:1003,nats://127.0.0.1:1013", false},
		{"OTHER_NATS", "nats://nats:4222", "nats://127.0.0.1:1003", false},
		{"S3_ENDPOINT", "http://minio:9000", "http://127.0.0.1:1002", false},
		{"S3_ENDPOINT", "http://s3.localhost:9000", "http://127.0.0.1:1002", false},
		{"S3_ENDPOINT", "http://lan.example:9000", "http://127.0.0.1:1002", false},
		{"PUBLIC_URL", "http://localhost:8080", "http://127.0.0.1:1004", false},
		{"RELAY_ALLOWED_ORIGINS", "http://localhost:8080,https://x.example", "http://127.0.0.1:1004,https://x.example", false},
		{"REALTIME_SIGNING_KEY", "compose:dev-only-secret", "compose:dev-only-secret", false},
		{"ALEX_API_URL", "https://alex.example:443/FHIR", "https://alex.example:443/FHIR", false},
		{"REDIS_URL", "redis://redis:6380/0", "", true}, // a port nothing serves
	}
	for _, tt := range tests {
		got, err := a.rewrite(tt.key, tt.in)
		if (err != nil) != tt.fail || got != tt.want {
			t.Errorf("rewrite(%s=%q) = %q, %v; want %q (error %v)", tt.key, tt.in, got, err, tt.want, tt.fail)
		}
	}
}
