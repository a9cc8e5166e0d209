package relay

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

// MaxMessageBytes is Ably's limit for one publish (every message in it
// together); the relay keeps each message under it with room for the
// envelope.
const MaxMessageBytes = 64 * 1024

// maxDataBytes is the largest payload sent as is. A bigger one (a session
// with very long notes, say) is replaced by a marker that makes the screen
// re-read the session.
const maxDataBytes = MaxMessageBytes - 2048

// stripped are payload fields never sent to a browser channel: presigned
// URLs would outlive the browser token. The screens get fresh ones from
// GET /api/users/:userId/session.
var stripped = map[string]bool{"s3Url": true, "previewUrl": true, "viewerUrl": true, "uploadUrl": true}

// browserMessage is what one event becomes on the user's channel.
type browserMessage struct {
	EventID string
	Name    string          // browser event name
	Channel string          // session:<userId>
	Time    int64           // event time, ms since the epoch
	Data    json.RawMessage // the payload the screen applies
	Scope   scope
}

// scope is what a phone's stream is scoped by: the session an event belongs
// to, the session a session.started replaced, the phone a pairing concerns.
type scope struct {
	SessionID         string `json:"sessionId"`
	PreviousSessionID string `json:"previousSessionId"`
	PhoneID           string `json:"phoneId"`
}

// SessionChannel is the channel of the event's own session, where phones
// paired with it listen, or "" for an event of no session (it reaches
// desktops only).
func (m browserMessage) SessionChannel() string {
	if !events.ValidUserID(m.Scope.SessionID) {
		return ""
	}
	user, _ := realtime.ChannelUser(m.Channel)
	return realtime.SessionChannel(user, m.Scope.SessionID)
}

// toBrowser turns an event into its browser message; ok is false for events
// no screen needs.
func toBrowser(ev events.Event) (browserMessage, bool, error) {
	name := ev.Type.BrowserName()
	if name == "" {
		return browserMessage{}, false, nil
	}
	data, err := sanitize(ev.Data)
	if err != nil {
		return browserMessage{}, false, fmt.Errorf("event %s data: %w", ev.Type, err)
	}
	if len(data) > maxDataBytes {
		data = resyncMarker(data)
	}
	var sc scope
	_ = json.Unmarshal(ev.Data, &sc) // an event without them reaches desktops only
	return browserMessage{EventID: ev.ID, Name: name, Channel: realtime.Channel(ev.Subject),
		Time: ev.Time.UnixMilli(), Data: data, Scope: sc}, true, nil
}

// sanitize removes the stripped fields at any depth, keeping numbers as
// they were written.
func sanitize(raw json.RawMessage) (json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return json.RawMessage("{}"), nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	v = strip(v)
	out, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func strip(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if stripped[k] {
				delete(t, k)
				continue
			}
			t[k] = strip(x)
		}
	case []any:
		for i, x := range t {
			t[i] = strip(x)
		}
	}
	return v
}

// resyncMarker keeps what lets a screen place the event (session, version,
// image id) and tells it to re-read the session.
func resyncMarker(data json.RawMessage) json.RawMessage {
	var keep struct {
		SessionID string      `json:"sessionId,omitempty"`
		Version   json.Number `json:"version,omitempty"`
		ImageID   string      `json:"imageId,omitempty"`
		Image     *struct {
			ID string `json:"id"`
		} `json:"image,omitempty"`
	}
	_ = json.Unmarshal(data, &keep)
	out := map[string]any{"resync": true}
	if keep.SessionID != "" {
		out["sessionId"] = keep.SessionID
	}
	if keep.Version != "" {
		out["version"] = keep.Version
	}
	if keep.ImageID != "" {
		out["imageId"] = keep.ImageID
	} else if keep.Image != nil && keep.Image.ID != "" {
		out["imageId"] = keep.Image.ID
	}
	b, _ := json.Marshal(out)
	return b
}

// envelope is the SSE message the built-in relay sends for m.
func (m browserMessage) envelope() realtime.Message {
	return realtime.Message{ID: m.EventID, Name: m.Name, Timestamp: m.Time, Encoding: "json",
		Channel: m.Channel, Data: string(m.Data)}
}
