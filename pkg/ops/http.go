package ops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/clinicalimages/clinimg/pkg/config"
)

// Limits bound what clients can hold of an HTTP server, so slow or hostile
// ones cannot starve the rest: a request's headers must arrive within
// ReadHeaderTimeout and its body within ReadTimeout, an answer must be
// written within WriteTimeout (a stream sets its own deadline per write, see
// StreamDeadlines), an idle keep-alive connection is closed after
// IdleTimeout, headers are at most MaxHeaderBytes, and at most MaxConns
// connections are open at once: one more is answered 503 and closed at once.
type Limits struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	MaxConns          int
}

// DefaultLimits suit an API of small JSON requests: 10 s for headers, 30 s for
// a body, 60 s to answer (longer than the API's 25 s commit wait), 60 s idle,
// 16 KiB of headers, 1024 connections.
func DefaultLimits() Limits {
	return Limits{
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		MaxConns:          1024,
	}
}

// ReadLimits reads a public server's limits, each defaulting to def's:
//
//	HTTP_READ_HEADER_TIMEOUT  HTTP_READ_TIMEOUT  HTTP_WRITE_TIMEOUT
//	HTTP_IDLE_TIMEOUT  HTTP_MAX_HEADER_BYTES  HTTP_MAX_CONNS
func ReadLimits(r *config.Reader, def Limits) Limits {
	l := Limits{
		ReadHeaderTimeout: r.Duration("HTTP_READ_HEADER_TIMEOUT", def.ReadHeaderTimeout),
		ReadTimeout:       r.Duration("HTTP_READ_TIMEOUT", def.ReadTimeout),
		WriteTimeout:      r.Duration("HTTP_WRITE_TIMEOUT", def.WriteTimeout),
		IdleTimeout:       r.Duration("HTTP_IDLE_TIMEOUT", def.IdleTimeout),
		MaxHeaderBytes:    r.Int("HTTP_MAX_HEADER_BYTES", def.MaxHeaderBytes),
		MaxConns:          r.Int("HTTP_MAX_CONNS", def.MaxConns),
	}
	if l.ReadHeaderTimeout <= 0 || l.ReadTimeout <= 0 || l.WriteTimeout <= 0 || l.IdleTimeout <= 0 {
		r.Fail("HTTP_READ_HEADER_TIMEOUT, HTTP_READ_TIMEOUT, HTTP_WRITE_TIMEOUT and HTTP_IDLE_TIMEOUT must be positive")
	}
	if l.MaxHeaderBytes < 4<<10 {
		r.Fail("HTTP_MAX_HEADER_BYTES must be at least 4096")
	}
	if l.MaxConns < 16 {
		r.Fail("HTTP_MAX_CONNS must be at least 16")
	}
	return l
}

// Server is one HTTP server: Handler on Addr under Limits.
type Server struct {
	Addr    string
	Handler http.Handler
	Limits  Limits // zero: DefaultLimits()
	// Ready, if not nil, receives the bound address (useful with port 0).
	Ready chan<- string
	// OnShutdown, if set, runs as shutdown begins, to end long-lived
	// streams that would otherwise hold it up.
	OnShutdown func()
	// Grace is how long requests in flight may take once ctx is done
	// (default DefaultGrace); then their connections are closed and their
	// contexts end.
	Grace time.Duration
}

// Run serves until ctx is done, then shuts down gracefully: no new
// connections, and requests in flight get Grace to finish. An empty Addr
// serves nothing.
func (s Server) Run(ctx context.Context) error {
	if s.Addr == "" {
		<-ctx.Done()
		return nil
	}
	lim := s.Limits
	if lim == (Limits{}) {
		lim = DefaultLimits()
	}
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.Addr, err)
	}
	if s.Ready != nil {
		s.Ready <- ln.Addr().String()
	}
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
	}
	if s.OnShutdown != nil {
		srv.RegisterOnShutdown(s.OnShutdown)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(capListener(ln, lim.MaxConns)) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", s.Addr, err)
	case <-ctx.Done():
	}
	grace := s.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		_ = srv.Close()
		return fmt.Errorf("shutdown %s: %w", s.Addr, err)
	}
	return nil
}

// StreamDeadlines lifts the server's read and write deadlines from a
// long-lived answer (Server-Sent Events), which then sets its own deadline
// before each write.
func StreamDeadlines(w http.ResponseWriter) *http.ResponseController {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	return rc
}

// overloaded is what a connection over the cap gets before it is closed.
var overloaded = func() []byte {
	body := `{"error":"too many connections","code":"overloaded"}`
	return fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"+
		"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}()

// capListener admits at most max connections at once; it accepts and at
// once answers 503 to any beyond that rather than leaving them queued, so
// a flood of idle connections neither blocks Accept nor holds descriptors.
func capListener(ln net.Listener, max int) net.Listener {
	return &capped{Listener: ln, slots: make(chan struct{}, max)}
}

type capped struct {
	net.Listener
	slots chan struct{}
}

func (l *capped) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &slotConn{Conn: c, free: func() { <-l.slots }}, nil
		default:
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = c.Write(overloaded)
			_ = c.Close()
		}
	}
}

type slotConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}
