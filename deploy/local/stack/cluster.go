package stack

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// jetStreamReady is nil once the node's JetStream answers (the cluster has
// a meta leader).
func jetStreamReady(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	_, err = js.AccountInfo(ctx)
	return err
}

// Connect opens a connection to the cluster (any node, reconnecting).
func (t *Topology) Connect() (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(t.NATSURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// StreamLeader is the node that leads the event stream, and its replicas
// (each with whether it is current).
func (t *Topology) StreamLeader(ctx context.Context, js jetstream.JetStream) (*Proc, *jetstream.StreamInfo, error) {
	s, err := js.Stream(ctx, t.Stream)
	if err != nil {
		return nil, nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, nil, err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return nil, info, fmt.Errorf("stream %s has no leader", t.Stream)
	}
	for _, n := range t.NATS {
		if n.Name == info.Cluster.Leader {
			return n, info, nil
		}
	}
	return nil, info, fmt.Errorf("stream %s led by %q, not a node of the stack", t.Stream, info.Cluster.Leader)
}
