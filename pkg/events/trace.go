package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// W3C trace context (https://www.w3.org/TR/trace-context/) travels with a
// change from the HTTP request that caused it, in the event envelope's
// traceparent extension and the NATS `traceparent` header, into the work it
// starts in other services. This file holds the small helpers for that; no
// tracing library is needed to carry the ids.

type traceKey struct{}

// ContextWithTraceParent returns ctx carrying tp, a W3C traceparent header
// value. An invalid tp leaves ctx unchanged.
func ContextWithTraceParent(ctx context.Context, tp string) context.Context {
	if !ValidTraceParent(tp) {
		return ctx
	}
	return context.WithValue(ctx, traceKey{}, tp)
}

// TraceParentFrom returns the traceparent ctx carries, or "".
func TraceParentFrom(ctx context.Context) string {
	tp, _ := ctx.Value(traceKey{}).(string)
	return tp
}

// NewTraceParent starts a new sampled trace: version 00, a random trace id
// and span id.
func NewTraceParent() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// ChildTraceParent keeps tp's trace id and flags with a new span id, for
// work done on behalf of tp (a handled message, a downstream call). An
// invalid tp starts a new trace.
func ChildTraceParent(tp string) string {
	if !ValidTraceParent(tp) {
		return NewTraceParent()
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return tp[:36] + hex.EncodeToString(b[:]) + tp[52:]
}

// TraceID is the 32-hex-digit trace id of tp, or "" if tp is not valid.
func TraceID(tp string) string {
	if !ValidTraceParent(tp) {
		return ""
	}
	return tp[3:35]
}

// ValidTraceParent reports whether tp is a version-00 traceparent with a
// non-zero trace id and span id.
func ValidTraceParent(tp string) bool {
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' {
		return false
	}
	for i, c := range tp {
		if i == 2 || i == 35 || i == 52 {
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return tp[3:35] != strings.Repeat("0", 32) && tp[36:52] != strings.Repeat("0", 16)
}

// LogAttrs are the attributes that let one photo and one commit be followed
// through every service's log: the event's id and type, the user, the trace
// id, and the image id and commit id its data names (if any). Nothing in
// them is a secret or clinical content.
func (e Event) LogAttrs() []any {
	attrs := []any{"event_id", e.ID, "event_type", string(e.Type), "user_id", e.Subject}
	if id := TraceID(e.TraceParent); id != "" {
		attrs = append(attrs, "trace_id", id)
	}
	var d struct {
		ImageID  string `json:"imageId"`
		CommitID string `json:"commitId"`
		Image    struct {
			ID string `json:"id"`
		} `json:"image"`
	}
	if json.Unmarshal(e.Data, &d) == nil {
		if d.ImageID == "" {
			d.ImageID = d.Image.ID
		}
		if d.ImageID != "" {
			attrs = append(attrs, "image_id", d.ImageID)
		}
		if d.CommitID != "" {
			attrs = append(attrs, "commit_id", d.CommitID)
		}
	}
	return attrs
}
