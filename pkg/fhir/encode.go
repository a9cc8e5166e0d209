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
// the photo is read once and never held in memory whole.
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
func Encode(m Media, data io.ReadCloser, size int64) (*Encoded, error) {
	if m.Content == nil {
		m.Content = &Attachment{}
	}
	var nonce [12]byte
	_, _ = rand.Read(nonce[:])
	dataMark := "CLINIMGDATA" + hex.EncodeToString(nonce[:])
	hashMark := "H" + hex.EncodeToString(nonce[:]) + "000"
	c := *m.Content
	c.Data, c.Hash, c.Size = dataMark, hashMark, size
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
	head, rest, ok1 := bytes.Cut(raw, []byte(dataMark))
	mid, tail, ok2 := bytes.Cut(rest, []byte(hashMark))
	if !ok1 || !ok2 || len(hashMark) != hashLen {
		data.Close()
		return nil, fmt.Errorf("encode media: placeholder lost")
	}
	pr, pw := io.Pipe()
	e := &Encoded{
		Body:   &pipeBody{PipeReader: pr},
		Length: int64(len(head)) + int64(base64.StdEncoding.EncodedLen(int(size))) + int64(len(mid)) + hashLen + int64(len(tail)),
		done:   make(chan struct{}),
	}
	go func() {
		defer close(e.done)
		defer data.Close()
		h := sha1.New()
		err := write(pw, head, mid, tail, data, size, h)
		if err == nil {
			e.sum = h.Sum(nil)
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

func writeBody(pw *bufio.Writer, head, mid, tail []byte, data io.Reader, size int64, h hash.Hash) error {
	if _, err := pw.Write(head); err != nil {
		return err
	}
	enc := base64.NewEncoder(base64.StdEncoding, pw)
	n, err := io.Copy(io.MultiWriter(h, enc), io.LimitReader(data, size+1))
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
