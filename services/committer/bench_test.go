package committer_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// BenchmarkCommit50 commits 50 photos of about 1 MB each against the ALEX
// simulator, in a process of its own, answering every request after 50 ms:
// once with the default parallelism (4) and once one photo at a time (the
// reference), each by a committer process of its own; then 10 photos with
// parallelism 4, the reference for memory. It reports both wall times
// (from the commit request to the session being committed), the speed-up,
// each committer's peak resident memory, which stays flat because photos
// stream from S3 through base64 into the request, and the CPU per photo of
// each process on the machine that the commit keeps busy (committer, ALEX
// simulator, S3, NATS, and this process, which seeds and polls): with
// several photos in flight the commit is bound by their sum, not by ALEX.
//
//	go test -run '^$' -bench BenchmarkCommit50 -benchtime 1x ./services/committer
func BenchmarkCommit50(b *testing.B) {
	e := newEnv(b, alexsim.Options{})
	sim := e.useSimProcess(b, "50ms")
	photo := noiseJPEG(1012, 1012)
	specsOf := func(n int) []photoSpec {
		sp := specs(n)
		for i := range sp {
			sp[i].clean = photo
		}
		return sp
	}
	run := func(n, parallelism int, cpu map[string]time.Duration) (time.Duration, float64) {
		b.StopTimer()
		userID, sess := e.seed(specsOf(n))
		ops := testenv.FreeAddr(b)
		p := e.startProcess(map[string]string{"COMMIT_PARALLELISM": strconv.Itoa(parallelism), "LOG_LEVEL": "warn", "OPS_ADDR": ops})
		e.waitPulling()
		e.waitPublished()
		e.waitReady("http://" + ops + "/readyz")
		procs := map[string]int{"committer": p.cmd.Process.Pid, "alexsim": sim.Cmd.Process.Pid,
			"s3": e.s3.Process.Cmd.Process.Pid, "nats": e.nats.Pid(), "harness": os.Getpid()}
		cpu0 := cpuTimes(b, procs)
		cpu0["redis"] = e.redisCPU(b)
		b.StartTimer()
		start := time.Now()
		cid := e.commit(userID, sess)
		got := e.outcome(userID, cid, 5*time.Minute)
		d := time.Since(start)
		b.StopTimer()
		cpu1 := cpuTimes(b, procs)
		cpu1["redis"] = e.redisCPU(b)
		for name, t := range cpu1 {
			cpu[name] += t - cpu0[name]
		}
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
	var parRSS, seqRSS, smallRSS float64
	parCPU, seqCPU := map[string]time.Duration{}, map[string]time.Duration{}
	b.ResetTimer()
	for range b.N {
		d, rss := run(50, 4, parCPU)
		par += d
		parRSS = max(parRSS, rss)
		d, rss = run(50, 1, seqCPU)
		seq += d
		seqRSS = max(seqRSS, rss)
		_, rss = run(10, 4, map[string]time.Duration{})
		smallRSS = max(smallRSS, rss)
	}
	b.StopTimer()
	b.ReportMetric(par.Seconds()/float64(b.N), "s/commit-parallel4")
	b.ReportMetric(seq.Seconds()/float64(b.N), "s/commit-serial")
	b.ReportMetric(seq.Seconds()/par.Seconds(), "speedup")
	b.ReportMetric(parRSS, "MB-peak-rss-parallel4")
	b.ReportMetric(seqRSS, "MB-peak-rss-serial")
	b.ReportMetric(smallRSS, "MB-peak-rss-10-photos")
	b.ReportMetric(parRSS/smallRSS, "rss-50-x-10")
	b.ReportMetric(float64(50*len(photo))/(1<<20), "MB-photos")
	for name, t := range parCPU {
		b.ReportMetric(float64(t.Milliseconds())/float64(50*b.N), "cpu-ms/photo-"+name+"-parallel4")
		b.ReportMetric(float64(seqCPU[name].Milliseconds())/float64(50*b.N), "cpu-ms/photo-"+name+"-serial")
	}
}

// cpuTimes is the CPU each process of procs (name -> pid) has used so far.
func cpuTimes(b *testing.B, procs map[string]int) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, pid := range procs {
		t, err := testenv.CPUTime(pid)
		if err != nil {
			b.Fatal(err)
		}
		out[name] = t
	}
	return out
}

// redisCPU is the CPU the Redis server has used so far, by its INFO: the
// server the tests share unless CLINIMG_TEST_REDIS_URL names one of this
// run's own, so it counts other work on a shared one.
func (e *env) redisCPU(b *testing.B) time.Duration {
	info, err := e.rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, l := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(l), ":")
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

// useSimProcess points the committer at an ALEX simulator running as a
// process of its own (the alexsim command, its default client and
// facility) that answers every request after latency, keeping no photo
// bytes, so the simulator's work is not the benchmark's.
func (e *env) useSimProcess(b *testing.B, latency string) *testenv.Process {
	bin := testenv.Build(b, "github.com/clinicalimages/clinimg/dev/alexsim/cmd/alexsim")
	addr := testenv.FreeAddr(b)
	p := testenv.StartProcess(b, bin, "ALEXSIM_ADDR="+addr, "ALEXSIM_LATENCY="+latency, "ALEXSIM_DROP_DATA=true")
	testenv.WaitHTTP(b, p, "http://"+addr+"/healthz", 30*time.Second)
	for k, v := range alexsim.New(alexsim.Options{}).Env("http://" + addr) {
		e.vars[k] = v
	}
	return p
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

// waitPublished waits until the outbox is empty: seeding a session leaves
// its events (a hundred for 50 photos) for the publisher of the committer
// started after it, and measured from the commit request they were
// published inside the window, the commit's request queued behind them
// (35-200 ms of a run, at random, whether parallel or serial). Published
// entries are deleted (XACK, XDEL), so an empty stream has none left.
func (e *env) waitPublished() {
	ctx := context.Background()
	testenv.Eventually(e.t, 30*time.Second, "the seeded events published", func() bool {
		n, err := e.rdb.XLen(ctx, e.store.Keys.Outbox()).Result()
		return err == nil && n == 0
	})
}

// waitReady waits until the committer answers readyz with 200, as a
// committer in service does between commits: its checks fetch the ALEX
// token, which otherwise the first photo of the run fetched (one more
// 50 ms round trip to the simulator, in a run of a process started for it).
func (e *env) waitReady(url string) {
	testenv.Eventually(e.t, 30*time.Second, "the committer ready", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
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
