package e2e

import (
	"io"
	"net"
	"sync"
)

// cutProxy is a TCP proxy in front of the relay's SSE endpoint: the API hands
// browsers its address, so the test can break every open realtime stream
// and refuse new ones (Cut) while the API stays reachable, then let them
// through again (Restore).
type cutProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	backend string // host:port of the relay
	cut     bool
	conns   map[net.Conn]bool
	refused int
	opened  int
}

func startCutProxy() (*cutProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &cutProxy{ln: ln, conns: map[net.Conn]bool{}}
	go p.serve()
	return p, nil
}

// Addr is where browsers connect.
func (p *cutProxy) Addr() string { return p.ln.Addr().String() }

// SetBackend sets where connections go.
func (p *cutProxy) SetBackend(hostport string) {
	p.mu.Lock()
	p.backend = hostport
	p.mu.Unlock()
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *cutProxy) handle(c net.Conn) {
	p.mu.Lock()
	cut, backend := p.cut, p.backend
	if cut {
		p.refused++
	}
	p.mu.Unlock()
	if cut || backend == "" {
		c.Close()
		return
	}
	b, err := net.Dial("tcp", backend)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[b] = true, true
	p.opened++
	p.mu.Unlock()
	done := func() {
		c.Close()
		b.Close()
		p.mu.Lock()
		delete(p.conns, c)
		delete(p.conns, b)
		p.mu.Unlock()
	}
	go func() { io.Copy(b, c); done() }()
	io.Copy(c, b)
	done()
}

// Cut closes every open connection and refuses new ones until Restore.
func (p *cutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore lets connections through again.
func (p *cutProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// Refused is how many connections were refused while cut.
func (p *cutProxy) Refused() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// Opened is how many connections went through.
func (p *cutProxy) Opened() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.opened
}

// Close stops the proxy.
func (p *cutProxy) Close() error { return p.ln.Close() }
