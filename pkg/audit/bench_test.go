package audit_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/audit"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// BenchmarkWriteBatch files 50 sessions × 20 events, interleaved, on the
// tests' S3 server (a child process checking SigV4): one event at a time
// (Handle: a read and a write of its document each, the reference) and in
// rounds of audit.BatchSize (WriteBatch: a read and a write per document
// per round), each on fresh sessions every iteration. It reports both
// rates, batched/one (the speed-up), and each path's CPU per event in this
// process (the API's share) and in the S3 server.
func BenchmarkWriteBatch(b *testing.B) {
	s3, proc := testenv.S3Process(b)
	w := audit.NewWriter(audit.NewStore(s3), nil)
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(1, 2))
	stream := func() []events.Event {
		var sessions [][]events.Event
		for range 50 {
			sessions = append(sessions, sessionEvents(b, "s-"+testenv.ID(), 6)[:20])
		}
		return interleave(rnd, sessions)
	}
	cpu := func() (self, server time.Duration) {
		server, err := testenv.CPUTime(proc.Cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		return testenv.SelfCPUTime(), server
	}
	// run times file and adds its wall time and CPU to acc.
	run := func(acc *[3]time.Duration, file func()) {
		self0, srv0 := cpu()
		start := time.Now()
		file()
		self1, srv1 := cpu()
		acc[0] += time.Since(start)
		acc[1] += self1 - self0
		acc[2] += srv1 - srv0
	}
	var one, batched [3]time.Duration
	n := 0
	for b.Loop() {
		evs := stream()
		run(&one, func() {
			for _, ev := range evs {
				if err := w.Handle(ctx, ev); err != nil {
					b.Fatal(err)
				}
			}
		})
		evs = stream()
		run(&batched, func() {
			for i := 0; i < len(evs); i += audit.BatchSize {
				for _, err := range w.WriteBatch(ctx, evs[i:min(i+audit.BatchSize, len(evs))]) {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		n += len(evs)
	}
	perEvent := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	b.ReportMetric(float64(n)/one[0].Seconds(), "one_events/s")
	b.ReportMetric(float64(n)/batched[0].Seconds(), "batched_events/s")
	b.ReportMetric(one[0].Seconds()/batched[0].Seconds(), "batched/one")
	b.ReportMetric(perEvent(one[1]), "one_self_cpu_µs/event")
	b.ReportMetric(perEvent(batched[1]), "batched_self_cpu_µs/event")
	b.ReportMetric(perEvent(one[2]), "one_s3_cpu_µs/event")
	b.ReportMetric(perEvent(batched[2]), "batched_s3_cpu_µs/event")
}
