package api

import (
	"github.com/gin-gonic/gin"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// trace gives every request W3C trace context: a caller's valid
// `traceparent` is continued with a new span id, otherwise a new trace
// starts. The session store copies it into the events the request causes,
// so the thumbnailer, committer and relay work on the same trace id.
func (s *Server) trace(c *gin.Context) {
	tp := events.ChildTraceParent(c.GetHeader("traceparent"))
	c.Request = c.Request.WithContext(events.ContextWithTraceParent(c.Request.Context(), tp))
	c.Next()
}
