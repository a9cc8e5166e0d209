package api

import "testing"

func TestDeviceSummary(t *testing.T) {
	cases := []struct{ ua, want string }{
		{"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", "iPhone, iOS 18.1, Safari 18"},
		{"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36", "Pixel 8, Android 14, Chrome 131"},
		{"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36", "Android 10, Chrome 131"},
		{"Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36", "SM-S918B, Android 14, Samsung Internet 25"},
		{"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", "Windows NT 10.0, Edge 131"},
		{"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36", "Linux, Chrome 156, headless"},
		{"", "unknown device"},
		{"curl/8.5.0", "unknown device"},
	}
	for _, c := range cases {
		if got := deviceSummary(c.ua); got != c.want {
			t.Errorf("deviceSummary(%q) = %q, want %q", c.ua, got, c.want)
		}
	}
}
