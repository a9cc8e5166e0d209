// Package s3local runs an in-process S3 server that checks SigV4 signatures
// and presigned-URL expiry (rclone/gofakes3 with V4 auth on a memory backend),
// for tests and the all-in-one local stack. It is not for production data.
package s3local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/rclone/gofakes3"
	"github.com/rclone/gofakes3/s3mem"

	"github.com/clinicalimages/clinimg/pkg/blob"
)

// Server is a running S3 server. Close stops it and drops every object.
type Server struct {
	URL       string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string
	srv       *http.Server
}

// Start serves S3 on addr ("127.0.0.1:0" for any free port) with one access
// key pair. Requests that are unsigned, wrongly signed or expired are refused.
func Start(addr, accessKey, secretKey string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("s3local listen: %w", err)
	}
	fake := gofakes3.New(s3mem.New(),
		gofakes3.WithV4Auth(map[string]string{accessKey: secretKey}),
		gofakes3.WithAutoBucket(false),
		gofakes3.WithoutVersioning(),
	)
	s := &Server{
		URL:       "http://" + ln.Addr().String(),
		AccessKey: accessKey, SecretKey: secretKey, Region: "ap-southeast-2",
		srv: &http.Server{Handler: fake.Server()},
	}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			panic(err)
		}
	}()
	return s, nil
}

// Config is the blob configuration that reaches this server's bucket.
func (s *Server) Config(bucket string) blob.Config {
	return blob.Config{Bucket: bucket, Region: s.Region, Endpoint: s.URL, AccessKey: s.AccessKey, SecretKey: s.SecretKey, PathStyle: true}
}

// Close stops the server.
func (s *Server) Close() error { return s.srv.Shutdown(context.Background()) }
