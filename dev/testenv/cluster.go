package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// StartNATSCluster starts n nats-server processes with JetStream joined in
// one cluster on loopback (each its own store under a temporary directory)
// and returns them; they stop with t. Replicated streams (R up to n) need
// one.
func StartNATSCluster(t testing.TB, n int) []*NATS {
	t.Helper()
	bin, err := natsServerBinary()
	if err != nil {
		t.Fatal(err)
	}
	name := "c" + ID()
	clients, routes := make([]int, n), make([]int, n)
	for i := range n {
		if clients[i], err = freePort(); err != nil {
			t.Fatal(err)
		}
		if routes[i], err = freePort(); err != nil {
			t.Fatal(err)
		}
	}
	var all []string
	for _, p := range routes {
		all = append(all, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	servers := make([]*NATS, n)
	errs := make(chan error, n)
	for i := range n {
		dir := t.TempDir()
		s := &NATS{dir: dir, URL: fmt.Sprintf("nats://127.0.0.1:%d", clients[i]), conf: filepath.Join(dir, "nats.conf")}
		conf := fmt.Sprintf("server_name: %s-%d\nlisten: 127.0.0.1:%d\njetstream {\n  store_dir: %q\n}\n"+
			"cluster {\n  name: %s\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
			name, i, clients[i], filepath.Join(dir, "js"), name, routes[i], strings.Join(all, ", "))
		if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		servers[i] = s
		t.Cleanup(s.Close)
		go func() { errs <- s.start(bin) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("nats cluster: %v", err)
		}
	}
	return servers
}

// StartNATSConf starts a JetStream server with extra appended to its
// configuration (authorization, tls blocks); it is ready once it accepts
// TCP connections, as a client may need credentials to say more.
func StartNATSConf(t testing.TB, extra string) *NATS {
	t.Helper()
	bin, err := natsServerBinary()
	if err != nil {
		t.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &NATS{dir: dir, URL: fmt.Sprintf("nats://127.0.0.1:%d", port), conf: filepath.Join(dir, "nats.conf")}
	conf := fmt.Sprintf("listen: 127.0.0.1:%d\njetstream {\n  store_dir: %q\n}\n%s\n", port, filepath.Join(dir, "js"), extra)
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, "-c", s.conf)
	var out bytes.Buffer
	s.cmd.Stdout, s.cmd.Stderr = &out, &out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.Close)
	Eventually(t, 15*time.Second, "nats-server accepting connections", func() bool {
		select {
		case <-s.done:
			t.Fatalf("nats-server exited: %s", out.String())
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return s
}
