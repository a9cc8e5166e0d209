package fhir

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
)

// hashLen is the length of a base64 SHA-1: 20 bytes encode to 28 characters.
const hashLen = 28

// Encoded is a Media resource on its way out: its JSON body streams the
// photo through base64, and the SHA-1 of the bytes actually sent is written
// after them (content.hash follows content.data in R4's element order), so
// the photo is read once and never held in memory whole. A caller that
// hashed the bytes already gives their SHA-1 in content.hash, and it is
// written as given rather than computed a second time.
type Encoded struct {
	// Body is the JSON; read it once. Closing it stops the encoding and
	// closes the photo's reader.
	Body io.ReadCloser
	// Length is the exact length of Body, for Content-Length.
	Length int64
	done   chan struct{}
	sum    []byte
	err    error
}

// Encode streams m with content.data read from data, which must yield
// exactly size bytes. data is closed when the body has been read or closed.
// m.Content.Hash, if set, must be the base64 SHA-1 of those bytes (the
// committer's, of the temporary file only it writes); if empty the encoder
// computes it from the bytes as they are sent.
func Encode(m Media, data io.ReadCloser, size int64) (*Encoded, error) {
	if m.Content == nil {
		m.Content = &Attachment{}
	}
	var nonce [12]byte
	_, _ = rand.Read(nonce[:])
	dataMark := "CLINIMGDATA" + hex.EncodeToString(nonce[:])
	hashMark := "H" + hex.EncodeToString(nonce[:]) + "000"
	c := *m.Content
	known := c.Hash
	if known == "" {
		c.Hash = hashMark
	} else if len(known) != hashLen {
		data.Close()
		return nil, fmt.Errorf("encode media: content.hash %q is not a base64 SHA-1", known)
	}
	c.Data, c.Size = dataMark, size
	m.Content = &c
	if size == 0 {
		data.Close()
		return nil, fmt.Errorf("encode media: empty photo")
	}
	raw, err := json.Marshal(m)
	if err != nil {
		data.Close()
		return nil, fmt.Errorf("encode media: %w", err)
	}
	head, rest, ok := bytes.Cut(raw, []byte(dataMark))
	mid, tail := rest, []byte(nil)
	if ok && known == "" {
		mid, tail, ok = bytes.Cut(rest, []byte(hashMark))
	}
	if !ok || len(hashMark) != hashLen {
		data.Close()
		return nil, fmt.Errorf("encode media: placeholder lost")
	}
	pr, pw := io.Pipe()
	e := &Encoded{
		Body:   &pipeBody{PipeReader: pr},
		Length: int64(len(head)) + int64(base64.StdEncoding.EncodedLen(int(size))) + int64(len(mid)) + int64(len(tail)),
		done:   make(chan struct{}),
	}
	var h hash.Hash
	if known == "" {
		h = sha1.New()
		e.Length += hashLen
	}
	go func() {
		defer close(e.done)
		defer data.Close()
		err := write(pw, head, mid, tail, data, size, h)
		if err == nil && h != nil {
			e.sum = h.Sum(nil)
		} else if err == nil {
			e.sum, err = base64.StdEncoding.DecodeString(known)
		}
		e.err = err
		pw.CloseWithError(err)
	}()
	return e, nil
}

// pipeChunk is how much the encoder hands the request at a time: base64's
// encoder writes 1 KiB pieces, and each piece through the pipe became a
// write system call of its own on the connection (about 1,400 per 1 MB
// photo), which made a commit's CPU, not ALEX's latency, its limit.
const pipeChunk = 64 << 10

func write(pipe *io.PipeWriter, head, mid, tail []byte, data io.Reader, size int64, h hash.Hash) error {
	pw := bufio.NewWriterSize(pipe, pipeChunk)
	if err := writeBody(pw, head, mid, tail, data, size, h); err != nil {
		return err
	}
	return pw.Flush()
}

// writeBody writes head, data in base64, mid, then (if h is not nil) the
// SHA-1 of data and tail.
func writeBody(pw *bufio.Writer, head, mid, tail []byte, data io.Reader, size int64, h hash.Hash) error {
	if _, err := pw.Write(head); err != nil {
		return err
	}
	enc := base64.NewEncoder(base64.StdEncoding, pw)
	var dst io.Writer = enc
	if h != nil {
		dst = io.MultiWriter(h, enc)
	}
	n, err := io.Copy(dst, io.LimitReader(data, size+1))
	if err != nil {
		return fmt.Errorf("read photo: %w", err)
	}
	if n != size {
		return fmt.Errorf("read photo: got %d bytes, want %d", n, size)
	}
	if err := enc.Close(); err != nil {
		return err
	}
	if _, err := pw.Write(mid); err != nil {
		return err
	}
	if h == nil {
		return nil
	}
	if _, err := pw.Write([]byte(base64.StdEncoding.EncodeToString(h.Sum(nil)))); err != nil {
		return err
	}
	_, err = pw.Write(tail)
	return err
}

// Hash waits for the body to be fully written and returns the base64 SHA-1
// of the photo bytes it carried.
func (e *Encoded) Hash() (string, error) {
	<-e.done
	if e.err != nil {
		return "", e.err
	}
	return base64.StdEncoding.EncodeToString(e.sum), nil
}

// Wait blocks until the encoder has stopped (after the body was read to the
// end or closed).
func (e *Encoded) Wait() { <-e.done }

type pipeBody struct{ *io.PipeReader }

func (p *pipeBody) Close() error { return p.PipeReader.CloseWithError(io.ErrClosedPipe) }
