// Package natsembed runs a real NATS server with JetStream inside the
// process (nats-server/v2), for tests and the all-in-one local stack.
package natsembed

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Start runs a server on 127.0.0.1:port (-1 for any free port) storing
// JetStream data in dir. The caller calls Shutdown.
func Start(port int, dir string) (*server.Server, error) {
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  dir,
		NoLog:     true,
		NoSigs:    true,
		// Every acked message is on disk: the local stack and tests crash
		// processes on purpose and must lose nothing.
		SyncAlways: true,
	})
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("nats server: not ready after 10s")
	}
	return s, nil
}
