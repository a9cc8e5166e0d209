package events_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
)

func TestKeepReplicas(t *testing.T) {
	tests := []struct{ existing, requested, want int }{
		{0, 0, 1}, {0, 1, 1}, {0, 3, 3}, // a new stream: as asked, at least 1
		{3, 1, 3}, {3, 0, 3}, // never lowered by a service that asks less
		{1, 3, 3}, {3, 5, 5}, // raised when asked
	}
	for _, tt := range tests {
		if got := events.KeepReplicas(tt.existing, tt.requested); got != tt.want {
			t.Errorf("KeepReplicas(%d, %d) = %d, want %d", tt.existing, tt.requested, got, tt.want)
		}
	}
}

// On a real three-node cluster: the stream made R3, a service restarting
// with NATS_REPLICAS unset (1) leaves it R3, and one asking 3 again changes
// nothing.
func TestEnsureNeverLowersReplicas(t *testing.T) {
	servers := testenv.StartNATSCluster(t, 3)
	nc, err := nats.Connect(servers[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	names := testenv.Names()
	ensure := func(replicas int) int {
		t.Helper()
		var st jetstream.Stream
		// A new cluster elects its meta leader first: wait it out.
		testenv.Eventually(t, 60*time.Second, "the stream ensured", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err = events.Ensure(ctx, js, names, replicas)
			return err == nil
		})
		info, err := st.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return info.Config.Replicas
	}
	for _, step := range []struct{ ask, want int }{{3, 3}, {1, 3}, {0, 3}, {3, 3}} {
		if got := ensure(step.ask); got != step.want {
			t.Fatalf("ensured asking %d replicas: stream has %d, want %d", step.ask, got, step.want)
		}
	}
}
