package committer_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/pkg/alexsim"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/pkg/testenv"
)

// BenchmarkCommit50 commits 50 photos of about 1 MB each against the
// simulator answering every request after 50 ms, once with the default
// parallelism (4) and once one photo at a time, each by a committer
// process of its own. It reports both wall times (from the commit request
// to the session being committed), the speed-up, and each committer
// process's peak resident memory: it stays flat because photos stream from
// S3 through base64 into the request.
//
//	go test -run '^$' -bench BenchmarkCommit50 -benchtime 1x ./services/committer
func BenchmarkCommit50(b *testing.B) {
	const n = 50
	e := newEnv(b, alexsim.Options{Latency: 50 * time.Millisecond, DropData: true})
	photo := noiseJPEG(1012, 1012)
	sp := specs(n)
	for i := range sp {
		sp[i].clean = photo
	}
	run := func(parallelism int) (time.Duration, float64) {
		b.StopTimer()
		userID, sess := e.seed(sp)
		p := e.startProcess(map[string]string{"COMMIT_PARALLELISM": strconv.Itoa(parallelism), "LOG_LEVEL": "warn"})
		e.waitPulling()
		b.StartTimer()
		start := time.Now()
		cid := e.commit(userID, sess)
		got := e.outcome(userID, cid, 5*time.Minute)
		d := time.Since(start)
		b.StopTimer()
		if got.CommitStatus != session.CommitCommitted {
			b.Fatalf("commit: %s %q", got.CommitStatus, got.Commit.Message)
		}
		// VmHWM is the process's own peak; rusage's maxrss of a child is not
		// (it counts the parent's memory the child shared before exec).
		rssMB := peakRSS(b, p.cmd.Process.Pid)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		<-p.done
		b.StartTimer()
		return d, rssMB
	}
	var par, seq time.Duration
	var parRSS, seqRSS float64
	b.ResetTimer()
	for range b.N {
		d, rss := run(4)
		par += d
		parRSS = max(parRSS, rss)
		d, rss = run(1)
		seq += d
		seqRSS = max(seqRSS, rss)
	}
	b.StopTimer()
	b.ReportMetric(par.Seconds()/float64(b.N), "s/commit-parallel4")
	b.ReportMetric(seq.Seconds()/float64(b.N), "s/commit-serial")
	b.ReportMetric(seq.Seconds()/par.Seconds(), "speedup")
	b.ReportMetric(parRSS, "MB-peak-rss-parallel4")
	b.ReportMetric(seqRSS, "MB-peak-rss-serial")
	b.ReportMetric(float64(n*len(photo))/(1<<20), "MB-photos")
}

// peakRSS reads a process's peak resident memory (VmHWM) in MiB.
func peakRSS(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				b.Fatal(err)
			}
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmHWM in /proc status")
	return 0
}

// waitPulling waits until a committer is pulling from the consumer, so a
// measurement does not include its start-up.
func (e *env) waitPulling() {
	ctx := context.Background()
	testenv.Eventually(e.t, 30*time.Second, "a committer pulling", func() bool {
		cons, err := e.js.Consumer(ctx, events.DefaultNames.Stream, events.ConsumerCommitter)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumWaiting > 0
	})
}
