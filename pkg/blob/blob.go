// Package blob is the photo store: an S3 bucket reached with aws-sdk-go-v2,
// for presigned uploads from phones and the services' own reads and writes.
package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// Config locates the bucket. With Endpoint empty the SDK's default chain
// (environment, shared config, instance role) reaches AWS itself.
type Config struct {
	Bucket    string
	Region    string // default ap-southeast-2
	Endpoint  string // an S3-compatible server, e.g. http://127.0.0.1:9000
	AccessKey string // static credentials; empty uses the default chain
	SecretKey string
	// PathStyle addresses the bucket in the path (local servers).
	PathStyle bool
	// URLLifetime is the longest lifetime of a URL this store presigns.
	// A presigned URL stops working when the credentials that signed it
	// expire (a role's session credentials), so credentials are renewed
	// this long plus CredentialMargin before they expire, and a URL is
	// never signed with credentials that would die first (default 1h, the
	// longest the API allows).
	URLLifetime time.Duration
	// Credentials, if set, replaces the static keys and the default chain
	// (tests).
	Credentials aws.CredentialsProvider
}

// CredentialMargin is how much longer than the URL lifetime credentials
// must still be valid when they sign a URL.
const CredentialMargin = time.Minute

// ErrNotFound is returned for a missing object.
var ErrNotFound = errors.New("object not found")

// Store is one bucket.
type Store struct {
	c       *s3.Client
	presign *s3.PresignClient
	bucket  string
	direct  *direct
}

// Open builds the S3 client for cfg. Nothing is contacted until first use.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("blob: bucket name is required")
	}
	if cfg.Region == "" {
		cfg.Region = "ap-southeast-2"
	}
	if cfg.URLLifetime <= 0 {
		cfg.URLLifetime = time.Hour
	}
	// Renew role credentials before the last URL they could sign would
	// outlive them (the SDK's cache otherwise keeps them to the end, and
	// the ECS provider's window is 5 minutes).
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(cfg.Region),
		awsconfig.WithCredentialsCacheOptions(func(o *aws.CredentialsCacheOptions) {
			o.ExpiryWindow = cfg.URLLifetime + CredentialMargin
		})}
	switch {
	case cfg.Credentials != nil:
		opts = append(opts, awsconfig.WithCredentialsProvider(cfg.Credentials))
	case cfg.AccessKey != "":
		opts = append(opts, awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	ac, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	c := s3.NewFromConfig(ac, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Only compute checksums where S3 requires them: a local server need
		// not know the newer checksum headers, and presigned URLs must not
		// carry any (S3 ignores a hoisted checksum anyway).
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	d, err := newDirect(cfg, ac.Credentials)
	if err != nil {
		return nil, err
	}
	return &Store{c: c, presign: s3.NewPresignClient(c), bucket: cfg.Bucket, direct: d}, nil
}

// Bucket is the bucket name.
func (s *Store) Bucket() string { return s.bucket }

// Client is the underlying S3 client, for set-up code and tests.
func (s *Store) Client() *s3.Client { return s.c }

// PresignPut returns a URL that accepts one PUT of key with exactly this
// content type (and length, when length > 0) until it expires. Nothing else
// is signed, so a client that sends only Content-Type succeeds; encryption is
// the bucket's default, not a header the client must send.
func (s *Store) PresignPut(ctx context.Context, key, contentType string, length int64, expires time.Duration) (string, error) {
	in := &s3.PutObjectInput{Bucket: &s.bucket, Key: &key, ContentType: &contentType}
	if length > 0 {
		in.ContentLength = &length
	}
	expires, err := s.direct.lifetime(ctx, expires, time.Now())
	if err != nil {
		return "", fmt.Errorf("presign put: %w", err)
	}
	req, err := s.presign.PresignPutObject(ctx, in, s3.WithPresignExpires(expires))
	if err != nil {
		return "", fmt.Errorf("presign put: %w", err)
	}
	return req.URL, nil
}

// PresignGet returns a URL that reads key until it expires. It is signed
// directly (SigV4, no SDK middleware), and a URL signed for the same key
// and lifetime is handed out again while two thirds of its life are left.
func (s *Store) PresignGet(ctx context.Context, key string, expires time.Duration) (string, error) {
	return s.direct.presignGet(ctx, key, expires, time.Now())
}

// Info is what Head tells of an object.
type Info struct {
	Size        int64
	ContentType string
	ETag        string
}

// Head describes key, or returns ErrNotFound.
func (s *Store) Head(ctx context.Context, key string) (Info, error) {
	out, err := s.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return Info{}, mapErr("head", err)
	}
	return Info{Size: aws.ToInt64(out.ContentLength), ContentType: aws.ToString(out.ContentType), ETag: aws.ToString(out.ETag)}, nil
}

// Sniff reads the first n bytes of key and what it is (its whole size) in
// one ranged GET: ErrNotFound if there is no such object, an empty head
// for an empty object, a *StatusError for any other refusal.
func (s *Store) Sniff(ctx context.Context, key string, n int) (Info, []byte, error) {
	return s.direct.head(ctx, key, n)
}

// Open streams key; the caller closes the reader. size is the object's length.
func (s *Store) Open(ctx context.Context, key string) (body io.ReadCloser, size int64, contentType string, err error) {
	out, err := s.c.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return nil, 0, "", mapErr("get", err)
	}
	return out.Body, aws.ToInt64(out.ContentLength), aws.ToString(out.ContentType), nil
}

// Put writes key. SSE is the bucket default.
func (s *Store) Put(ctx context.Context, key, contentType string, body io.ReadSeeker, size int64) error {
	_, err := s.c.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.bucket, Key: &key, Body: body, ContentType: &contentType, ContentLength: &size})
	if err != nil {
		return mapErr("put", err)
	}
	return nil
}

// Delete removes keys; missing ones are not an error.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if k == "" {
			continue
		}
		if _, err := s.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: aws.String(k)}); err != nil {
			if err := mapErr("delete", err); !errors.Is(err, ErrNotFound) {
				return err
			}
		}
	}
	return nil
}

// EnsureBucket creates the bucket if it does not exist (local servers and
// tests; production buckets are made by ops).
func (s *Store) EnsureBucket(ctx context.Context) error {
	if _, err := s.c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}); err == nil {
		return nil
	}
	_, err := s.c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &s.bucket})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) && !strings.Contains(err.Error(), "BucketAlreadyExists") {
		return fmt.Errorf("create bucket: %w", err)
	}
	return nil
}

// Ping checks that the bucket is reachable (readiness).
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}); err != nil {
		return fmt.Errorf("head bucket: %w", err)
	}
	return nil
}

func mapErr(op string, err error) error {
	var nf *types.NoSuchKey
	var nf2 *types.NotFound
	if errors.As(err, &nf) || errors.As(err, &nf2) {
		return ErrNotFound
	}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
		return ErrNotFound
	}
	var ae smithy.APIError
	if errors.As(err, &ae) && (ae.ErrorCode() == "NoSuchKey" || ae.ErrorCode() == "NotFound") {
		return ErrNotFound
	}
	return fmt.Errorf("s3 %s: %w", op, err)
}
