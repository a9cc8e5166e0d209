package blob

import (
	"context"

	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// direct signs the two requests on the API's hot path, the presigned GET
// of a photo and the ranged read that verifies an upload, with SigV4 itself
// rather than through the SDK's per-call middleware stack: the same
// signature for a fraction of the work.
type direct struct {
	signer *v4.Signer
	creds  aws.CredentialsProvider
	region string
	bucket string
	base   url.URL // scheme and host; path is /bucket for path-style addressing
	http   *http.Client

	mu     sync.Mutex
	signed map[presignKey]presigned
}

type presignKey struct {
	key     string
	expires time.Duration
}

type presigned struct {
	url string
	at  time.Time
}

// maxPresigned bounds the reuse cache; past it, entries too old to reuse
// are dropped.
const maxPresigned = 50_000

func newDirect(cfg Config, creds aws.CredentialsProvider) (*direct, error) {
	d := &direct{
		signer: v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true }),
		creds:  creds, region: cfg.Region, bucket: cfg.Bucket,
		http:   &http.Client{Transport: transport()},
		signed: map[presignKey]presigned{},
	}
	pathStyle := cfg.PathStyle || strings.Contains(cfg.Bucket, ".")
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("blob: endpoint %q is not a URL", cfg.Endpoint)
		}
		d.base = url.URL{Scheme: u.Scheme, Host: u.Host, Path: strings.TrimSuffix(u.Path, "/")}
	} else {
		d.base = url.URL{Scheme: "https", Host: "s3." + cfg.Region + ".amazonaws.com"}
	}
	if pathStyle {
		d.base.Path += "/" + cfg.Bucket
	} else {
		d.base.Host = cfg.Bucket + "." + d.base.Host
	}
	return d, nil
}

func transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 256
	return t
}

// objectURL is key's URL, its path escaped as S3 signs it: every byte but
// the unreserved ones and '/'.
func (d *direct) objectURL(key string) *url.URL {
	u := d.base
	u.Path = d.base.Path + "/" + key
	u.RawPath = d.base.Path + "/" + escapeKey(key)
	return &u
}

func escapeKey(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' || c == '/' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// presignGet returns a URL that reads key for expires. A URL signed
// earlier is handed out again while at least two thirds of its life is
// left, so a session answered again and again signs each photo about once
// every expires/3.
func (d *direct) presignGet(ctx context.Context, key string, expires time.Duration, now time.Time) (string, error) {
	k := presignKey{key, expires}
	d.mu.Lock()
	p, ok := d.signed[k]
	d.mu.Unlock()
	if ok && now.Sub(p.at) < expires/3 && !now.Before(p.at) {
		return p.url, nil
	}
	creds, err := d.fresh(ctx, expires, now)
	if err != nil {
		return "", fmt.Errorf("presign get: credentials: %w", err)
	}
	full := expires
	expires = usable(creds, expires, now)
	u := d.objectURL(key)
	u.RawQuery = "X-Amz-Expires=" + strconv.FormatInt(int64(expires/time.Second), 10)
	req := &http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Header: http.Header{}}
	signed, _, err := d.signer.PresignHTTP(ctx, creds, req, "UNSIGNED-PAYLOAD", "s3", d.region, now)
	if err != nil {
		return "", fmt.Errorf("presign get: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.signed) >= maxPresigned {
		for k, p := range d.signed {
			if now.Sub(p.at) >= k.expires/3 {
				delete(d.signed, k)
			}
		}
	}
	if len(d.signed) < maxPresigned && expires == full {
		d.signed[k] = presigned{signed, now}
	}
	return signed, nil
}

// fresh returns credentials that outlive a URL signed now for expires
// (plus CredentialMargin) when the provider has such: credentials cached
// since before a role rotated them are dropped and fetched again once.
func (d *direct) fresh(ctx context.Context, expires time.Duration, now time.Time) (aws.Credentials, error) {
	creds, err := d.creds.Retrieve(ctx)
	if err != nil || usable(creds, expires, now) == expires {
		return creds, err
	}
	if c, ok := d.creds.(*aws.CredentialsCache); ok {
		c.Invalidate()
		return c.Retrieve(ctx)
	}
	return creds, nil
}

// lifetime is how long a URL signed now for expires can really work: all of
// it, or what is left of the credentials' life (less the margin) when even
// fresh ones die sooner.
func (d *direct) lifetime(ctx context.Context, expires time.Duration, now time.Time) (time.Duration, error) {
	creds, err := d.fresh(ctx, expires, now)
	if err != nil {
		return 0, err
	}
	return usable(creds, expires, now), nil
}

// usable is expires, or the whole seconds creds have left less the margin
// when that is shorter (at least one second).
func usable(creds aws.Credentials, expires time.Duration, now time.Time) time.Duration {
	if !creds.CanExpire {
		return expires
	}
	left := creds.Expires.Sub(now) - CredentialMargin
	if left >= expires {
		return expires
	}
	return max(left.Truncate(time.Second), time.Second)
}

// emptySHA256 is the payload hash of a request without a body.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// head reads the first n bytes of key in one ranged GET, and the object's
// size from its Content-Range.
func (d *direct) head(ctx context.Context, key string, n int) (Info, []byte, error) {
	creds, err := d.creds.Retrieve(ctx)
	if err != nil {
		return Info{}, nil, fmt.Errorf("s3 get: credentials: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.objectURL(key).String(), nil)
	if err != nil {
		return Info{}, nil, fmt.Errorf("s3 get: %w", err)
	}
	req.Header.Set("Range", "bytes=0-"+strconv.Itoa(n-1))
	req.Header.Set("X-Amz-Content-Sha256", emptySHA256)
	if err := d.signer.SignHTTP(ctx, creds, req, emptySHA256, "s3", d.region, time.Now()); err != nil {
		return Info{}, nil, fmt.Errorf("s3 get: %w", err)
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return Info{}, nil, fmt.Errorf("s3 get: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotFound:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return Info{}, nil, ErrNotFound
	case http.StatusRequestedRangeNotSatisfiable:
		// The first byte of an object that has one is always in range:
		// the object is there and empty.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return Info{}, nil, nil
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return Info{}, nil, &StatusError{Op: "get", Code: resp.StatusCode, Body: string(msg)}
	}
	info := Info{Size: resp.ContentLength, ContentType: resp.Header.Get("Content-Type"), ETag: resp.Header.Get("ETag")}
	if resp.StatusCode == http.StatusPartialContent {
		if info.Size, err = totalSize(resp.Header.Get("Content-Range")); err != nil {
			return Info{}, nil, err
		}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(n)))
	if err != nil {
		return Info{}, nil, fmt.Errorf("read %d bytes: %w", n, err)
	}
	return info, b, nil
}

// totalSize is the complete length a Content-Range ("bytes 0-15/1234") names.
func totalSize(cr string) (int64, error) {
	_, total, ok := strings.Cut(cr, "/")
	n, err := strconv.ParseInt(total, 10, 64)
	if !ok || err != nil || n < 0 {
		return 0, fmt.Errorf("s3 get: Content-Range %q", cr)
	}
	return n, nil
}

// StatusError is an S3 answer that is not a success, with its status.
type StatusError struct {
	Op   string
	Code int
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("s3 %s: status %d: %.200s", e.Op, e.Code, e.Body)
}

// HTTPStatusCode is the status S3 answered.
func (e *StatusError) HTTPStatusCode() int { return e.Code }

var _ interface{ HTTPStatusCode() int } = (*StatusError)(nil)
