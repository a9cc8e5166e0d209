package events

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTraceParent(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		in   string
		want bool
	}{
		{tp, true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true},
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := ValidTraceParent(tt.in); got != tt.want {
			t.Errorf("ValidTraceParent(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}

	child := ChildTraceParent(tp)
	if !ValidTraceParent(child) || TraceID(child) != TraceID(tp) || child[36:52] == tp[36:52] || child[53:] != "01" {
		t.Errorf("ChildTraceParent(%q) = %q: want the same trace id and flags, a new span id", tp, child)
	}
	if n := ChildTraceParent("junk"); !ValidTraceParent(n) {
		t.Errorf("ChildTraceParent(junk) = %q, want a new valid traceparent", n)
	}
	if a, b := NewTraceParent(), NewTraceParent(); a == b || !ValidTraceParent(a) {
		t.Errorf("NewTraceParent gave %q and %q", a, b)
	}

	ctx := ContextWithTraceParent(context.Background(), tp)
	if got := TraceParentFrom(ctx); got != tp {
		t.Errorf("TraceParentFrom = %q, want %q", got, tp)
	}
	if got := TraceParentFrom(ContextWithTraceParent(context.Background(), "bad")); got != "" {
		t.Errorf("an invalid traceparent was kept: %q", got)
	}
}

func TestLogAttrs(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		typ  Type
		data any
		tp   string
		want []any
	}{
		{"image event", ImageUploaded, map[string]any{"image": map[string]any{"id": "img1", "metadata": map[string]any{"notes": "secret"}}}, "",
			[]any{"event_id", "e1", "event_type", "image.uploaded", "user_id", "u1", "image_id", "img1"}},
		{"commit progress", CommitProgress, map[string]any{"commitId": "c1", "imageId": "img2"}, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			[]any{"event_id", "e1", "event_type", "commit.progress", "user_id", "u1", "trace_id", "4bf92f3577b34da6a3ce929d0e0e4736", "image_id", "img2", "commit_id", "c1"}},
		{"no data", SessionStarted, nil, "",
			[]any{"event_id", "e1", "event_type", "session.started", "user_id", "u1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := NewWithID("e1", "/test", tt.typ, "u1", tt.data, now)
			if err != nil {
				t.Fatal(err)
			}
			ev.TraceParent = tt.tp
			if diff := cmp.Diff(tt.want, ev.LogAttrs()); diff != "" {
				t.Errorf("LogAttrs (-want +got):\n%s", diff)
			}
			raw, _ := json.Marshal(ev)
			back, err := Decode(raw)
			if err != nil || back.TraceParent != tt.tp {
				t.Errorf("round trip: traceparent %q, err %v", back.TraceParent, err)
			}
		})
	}
}
