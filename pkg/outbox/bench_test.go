package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// BenchmarkDrain measures how fast one publisher moves a full outbox into
// JetStream (read a batch, publish it asynchronously, acknowledge and
// delete it in one Redis call), next to the reference measured in the same
// run on the same nats-server: the same number of the same messages, each
// with its Nats-Msg-Id, published asynchronously from memory as fast as
// the client's async window allows. ratio is drain time over raw time. Two servers:
// sync=always fsyncs every message (the disk's fsync rate bounds both
// figures), sync=default syncs every 2 minutes (the publisher's own cost).
//
//	go test -run '^$' -bench Drain -benchtime 20000x ./pkg/outbox
func BenchmarkDrain(b *testing.B) {
	b.Run("sync=always", func(b *testing.B) { benchDrain(b, testenv.StartNATS(b)) })
	b.Run("sync=default", func(b *testing.B) { benchDrain(b, testenv.StartNATSUnsynced(b)) })
}

func benchDrain(b *testing.B, srv *testenv.NATS) {
	rdb, prefix := testenv.Redis(b)
	nc, js := srv.Connect(b)
	ctx := context.Background()
	names := testenv.Names()
	if _, err := events.Ensure(ctx, js, names, 1); err != nil {
		b.Fatal(err)
	}
	raw := names
	raw.Stream, raw.Prefix = "RAW"+raw.Stream, "raw"+raw.Prefix
	if _, err := events.Ensure(ctx, js, raw, 1); err != nil {
		b.Fatal(err)
	}
	stream := prefix + "outbox"
	payload := benchEvent(b)
	fill(b, rdb, stream, names, payload, b.N)

	log, _ := testenv.Logger(b)
	p, err := New(rdb, nc, stream, "bench", log, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	stop := run(ctx, p)
	for {
		n, err := Depth(ctx, rdb, stream)
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	drain := time.Since(start)
	b.StopTimer()
	stop()

	direct := rawPublish(b, js, raw, payload, b.N)
	b.ReportMetric(float64(b.N)/drain.Seconds(), "events/s")
	b.ReportMetric(float64(b.N)/direct.Seconds(), "raw-async-events/s")
	b.ReportMetric(drain.Seconds()/direct.Seconds(), "ratio")
}

const benchTrace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// benchEvent is an image.uploaded envelope of the size the API writes.
func benchEvent(b *testing.B) []byte {
	ev, err := events.New("/clinimg/api", events.ImageUploaded, "bench_user", map[string]any{
		"sessionId": "2f0c3b1e-7d7f-4a53-9f5d-7d0a6c1c2b11", "version": 12, "imageCount": 11,
		"image": map[string]any{"id": "img_0123456789", "s3Key": "temp/bench_user/2f0c3b1e-7d7f-4a53-9f5d-7d0a6c1c2b11.jpg",
			"uploaded": true, "source": "mobile", "capturedAt": time.Now().UTC(), "contentType": "image/jpeg",
			"size": 1843200, "status": "processing", "mediaIdentifier": "QWERTYUIOPASDFGHJKLZXCVBNM", "commitState": "pending",
			"metadata": map[string]any{"bodySite": "368208006", "bodySiteDisplay": "Left upper arm structure", "laterality": "left"}},
	}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	ev.TraceParent = benchTrace
	out, err := json.Marshal(ev)
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// fill appends n entries as the session scripts do (id, subject, event).
func fill(b *testing.B, rdb *redis.Client, stream string, names events.Names, payload []byte, n int) {
	ctx := context.Background()
	id := `"id":"`
	i := strings.Index(string(payload), id) + len(id)
	for done := 0; done < n; {
		pipe := rdb.Pipeline()
		for k := 0; k < 1000 && done < n; k++ {
			eid := fmt.Sprintf("%032x", done)
			ev := string(payload[:i]) + eid + string(payload[i+32:])
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"id", eid, "subject", names.Subject(events.ImageUploaded, "bench_user"), "event", ev}})
			done++
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// rawPublish publishes n copies of payload with distinct Nats-Msg-Ids
// asynchronously, as fast as the client's async window (4,000 unacked by
// default) lets it, and returns how long until the last ack.
func rawPublish(b *testing.B, js jetstream.JetStream, names events.Names, payload []byte, n int) time.Duration {
	subject := names.Subject(events.ImageUploaded, "bench_user")
	start := time.Now()
	for i := range n {
		if _, err := js.PublishMsgAsync(events.Message(subject, fmt.Sprintf("raw-%d", i), benchTrace, payload), jetstream.WithStallWait(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("raw publish: acks missing after 5 minutes")
	}
	return time.Since(start)
}
