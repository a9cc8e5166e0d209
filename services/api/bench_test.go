package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/session"
)

func TestMain(m *testing.M) { testenv.ChildMain(m, map[string]testenv.Role{"load": loadRole}) }

const (
	benchClients = 200
	perSession   = 10 // each client's session goes from 0 to 10 photos, then starts again
)

// BenchmarkRecordImage measures POST /api/users/:userId/images through the
// whole API (phone auth, decode, the S3 check of the object, the Lua step
// with its outbox append, the session in the answer) with 200 clients, each
// a phone whose session goes from 0 to 10 photos and starts again. The
// clients run in a process of their own and so does the S3 server, so the
// CPU this process uses is the API's. Beside it, in the same run and with
// the same clients: a static Gin route (static), the reference for rate and
// CPU per request, and the bare Lua step called 200 at a time
// (redis-script). Each reports requests/s, p50-ms, p99-ms, api-cpu-us/op
// (this process), redis-cpu-us/op (a redis-server of the benchmark's own)
// and s3-cpu-us/op (the S3 server's process); the two that go through HTTP
// also report client-cpu-us/op (the load process), so what the machine
// spends per request is their sum. api reports cpu-x-static, its CPU per
// request over the static route's.
//
// It measures the request only: the work Run adds for each record beside
// it, in the same process, is not here (the outbox publisher sending its
// event to JetStream, and the audit writer appending it to the session's
// trail in S3, a GET and a PUT through the SDK, one event at a time).
//
//	go test -run '^$' -bench RecordImage ./services/api
func BenchmarkRecordImage(b *testing.B) {
	objects, s3Proc := testenv.S3Process(b)
	rdb, redisProc := testenv.RedisProcess(b)
	h := newHarnessOn(b, rdb, "", objects, func(c *Config) {
		c.MaxImages, c.MaxImageBytes, c.QRRedeemLimit = 50, 10<<20, 10*benchClients
	})
	pids := servers{redis: redisProc.Cmd.Process.Pid, s3: s3Proc.Cmd.Process.Pid}

	clients := make([]benchClient, benchClients)
	for i := range clients {
		u := fmt.Sprintf("bench%d", i)
		p := h.start(u, "p1")
		k, _ := h.upload(u, p, jpegBytes)
		clients[i] = benchClient{user: u, phone: p, key: k}
	}

	var staticCPU float64
	b.Run("static", func(b *testing.B) {
		r := gin.New()
		r.GET("/static", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"ok": true}) })
		srv := httptest.NewServer(r)
		defer srv.Close()
		load := loadConfig{Base: srv.URL}
		for i := range benchClients {
			load.Clients = append(load.Clients, loadClient{Method: "GET", Path: "/static", Count: share(b.N, i)})
		}
		m := runLoad(b, load, pids)
		m.report(b)
		staticCPU = m.cpuPerOp()
	})

	b.Run("api", func(b *testing.B) {
		var seq atomic.Int64
		var m measured
		for done := 0; done < b.N; {
			b.StopTimer()
			round := min(b.N-done, benchClients*perSession)
			load := loadConfig{Base: h.srv.URL}
			for i := range clients {
				c := &clients[i]
				c.restart(b, h)
				lc := loadClient{Method: "POST", Path: "/api/users/" + c.user + "/images", Token: c.phone}
				for range share(round, i) {
					lc.Bodies = append(lc.Bodies, fmt.Sprintf(`{"imageId":"i%d","s3Key":%q,"source":"mobile"}`, seq.Add(1), c.key))
				}
				load.Clients = append(load.Clients, lc)
			}
			b.StartTimer()
			m.add(runLoad(b, load, pids))
			done += round
		}
		m.report(b)
		if staticCPU > 0 {
			b.ReportMetric(m.cpuPerOp()/staticCPU, "cpu-x-static")
		}
	})

	b.Run("redis-script", func(b *testing.B) {
		ctx := context.Background()
		var seq atomic.Int64
		var m measured
		for done := 0; done < b.N; {
			b.StopTimer()
			round := min(b.N-done, benchClients*perSession)
			for i := range clients {
				clients[i].restart(b, h)
			}
			b.StartTimer()
			cpu0, r0 := testenv.SelfCPUTime(), pids.cpu(b)
			lat := make([][]int64, len(clients))
			start := time.Now()
			var wg sync.WaitGroup
			for i, c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range share(round, i) {
						img := session.Image{ID: fmt.Sprintf("r%d", seq.Add(1)), S3Key: c.key, ContentType: "image/jpeg", Size: 1}
						t0 := time.Now()
						if _, _, err := h.store.AddImage(ctx, c.user, "", img); err != nil {
							b.Error(err)
							return
						}
						lat[i] = append(lat[i], time.Since(t0).Microseconds())
					}
				}()
			}
			wg.Wait()
			m.add(measured{lat: slices.Concat(lat...), seconds: time.Since(start).Seconds(),
				cpu: testenv.SelfCPUTime() - cpu0, servers: pids.cpu(b).minus(r0)})
			done += round
		}
		m.report(b)
	})
}

// benchClient is one phone with its session and one uploaded photo.
type benchClient struct{ user, phone, key string }

// restart gives the client a new, empty session and a phone paired with it,
// straight through the store (not part of what is measured).
func (c *benchClient) restart(b *testing.B, h *harness) {
	ctx := context.Background()
	tok := "tok" + testenv.ID() + testenv.ID()
	if _, err := h.store.Start(ctx, session.StartParams{UserID: c.user, PatientID: "p" + testenv.ID(), EncounterID: "e1",
		Token: tok, SessionID: "s" + testenv.ID(), Discard: true}); err != nil {
		b.Fatal(err)
	}
	c.phone = phonePrefix + testenv.ID() + testenv.ID()
	if _, err := h.store.Pair(ctx, tok, c.phone, "bench"); err != nil {
		b.Fatal(err)
	}
}

// share is client i's part of n requests spread over benchClients.
func share(n, i int) int {
	s := n / benchClients
	if i < n%benchClients {
		s++
	}
	return s
}

// loadConfig is what the load child sends: each client its requests, one
// after another, all clients at once.
type loadConfig struct {
	Base    string       `json:"base"`
	Clients []loadClient `json:"clients"`
}

type loadClient struct {
	Method string   `json:"method"`
	Path   string   `json:"path"`
	Token  string   `json:"token,omitempty"`
	Bodies []string `json:"bodies,omitempty"` // one request each
	Count  int      `json:"count,omitempty"`  // or this many without a body
}

type loadResult struct {
	LatencyUS []int64       `json:"latencyUs"`
	Seconds   float64       `json:"seconds"`
	CPU       time.Duration `json:"cpu"` // the load process's own, while it sent
	Errors    []string
}

// loadRole is the child's side: it sends every client's requests and
// times each.
func loadRole(raw []byte, _ func(), _ <-chan struct{}) (any, error) {
	var cfg loadConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: len(cfg.Clients), MaxConnsPerHost: len(cfg.Clients)}}
	lat := make([][]int64, len(cfg.Clients))
	errs := make([]string, len(cfg.Clients))
	cpu0, start := testenv.SelfCPUTime(), time.Now()
	var wg sync.WaitGroup
	for i, c := range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := max(c.Count, len(c.Bodies))
			for k := range n {
				var body io.Reader
				if k < len(c.Bodies) {
					body = strings.NewReader(c.Bodies[k])
				}
				req, _ := http.NewRequest(c.Method, cfg.Base+c.Path, body)
				if body != nil {
					req.Header.Set("Content-Type", "application/json")
				}
				if c.Token != "" {
					req.Header.Set("Authorization", "Bearer "+c.Token)
				}
				t0 := time.Now()
				resp, err := hc.Do(req)
				if err != nil {
					errs[i] = err.Error()
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[i] = append(lat[i], time.Since(t0).Microseconds())
				if resp.StatusCode != http.StatusOK {
					errs[i] = c.Method + " " + c.Path + ": " + strconv.Itoa(resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	out := loadResult{LatencyUS: slices.Concat(lat...), Seconds: time.Since(start).Seconds(), CPU: testenv.SelfCPUTime() - cpu0}
	for _, e := range errs {
		if e != "" {
			out.Errors = append(out.Errors, e)
		}
	}
	return out, nil
}

// measured adds up rounds of load.
type measured struct {
	lat     []int64
	seconds float64
	cpu     time.Duration // this process's
	client  time.Duration // the load process's (0: the load ran here)
	servers serverCPU
}

func (m *measured) add(o measured) {
	m.lat = append(m.lat, o.lat...)
	m.seconds += o.seconds
	m.cpu += o.cpu
	m.client += o.client
	m.servers.redis += o.servers.redis
	m.servers.s3 += o.servers.s3
}

func (m *measured) cpuPerOp() float64 { return float64(m.cpu.Microseconds()) / float64(len(m.lat)) }

func (m *measured) report(b *testing.B) {
	if len(m.lat) == 0 {
		return
	}
	slices.Sort(m.lat)
	b.ReportMetric(float64(len(m.lat))/m.seconds, "requests/s")
	b.ReportMetric(float64(m.lat[len(m.lat)/2])/1000, "p50-ms")
	b.ReportMetric(float64(m.lat[len(m.lat)*99/100])/1000, "p99-ms")
	b.ReportMetric(m.cpuPerOp(), "api-cpu-us/op")
	perOp := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(len(m.lat)) }
	b.ReportMetric(perOp(m.servers.redis), "redis-cpu-us/op")
	b.ReportMetric(perOp(m.servers.s3), "s3-cpu-us/op")
	if m.client > 0 {
		b.ReportMetric(perOp(m.client), "client-cpu-us/op")
	}
}

// servers are the processes of the Redis and S3 servers.
type servers struct{ redis, s3 int }

// serverCPU is the CPU each server has used.
type serverCPU struct{ redis, s3 time.Duration }

func (p servers) cpu(b *testing.B) serverCPU {
	return serverCPU{redis: procCPU(b, p.redis), s3: procCPU(b, p.s3)}
}

func (c serverCPU) minus(o serverCPU) serverCPU {
	return serverCPU{redis: c.redis - o.redis, s3: c.s3 - o.s3}
}

// runLoad runs cfg in a child process and measures this process's CPU
// and the servers' while it runs.
func runLoad(b *testing.B, cfg loadConfig, pids servers) measured {
	cpu0, s0 := testenv.SelfCPUTime(), pids.cpu(b)
	child := testenv.StartChild(b, "load", cfg)
	var res loadResult
	child.Result(&res, 10*time.Minute)
	m := measured{lat: res.LatencyUS, seconds: res.Seconds, cpu: testenv.SelfCPUTime() - cpu0,
		client: res.CPU, servers: pids.cpu(b).minus(s0)}
	if len(res.Errors) > 0 {
		b.Fatalf("%d clients failed, first: %s", len(res.Errors), res.Errors[0])
	}
	return m
}

func procCPU(b *testing.B, pid int) time.Duration {
	d, err := testenv.CPUTime(pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}
