package session

import "context"

// Actor is who made a change: the desktop or a paired phone. Events carry
// it as data.by, for the audit trail.
type Actor string

// The actors.
const (
	ActorDesktop Actor = "desktop"
	ActorPhone   Actor = "phone"
)

type actorKey struct{}

// WithActor returns ctx carrying who is making the changes made with it;
// the store puts it on their events.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom is the actor WithActor put on ctx, or "".
func ActorFrom(ctx context.Context) Actor {
	a, _ := ctx.Value(actorKey{}).(Actor)
	return a
}
