package committer

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strings"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// photo is the clean bytes of one image in a temporary file, with their
// SHA-1: what is sent is exactly what was hashed and recorded as sent.
type photo struct {
	path          string
	size          int64
	hash          string // base64 SHA-1, as content.hash
	contentType   string
	width, height int
}

// src opens the bytes for one write.
func (p photo) src(context.Context) (io.ReadCloser, int64, error) {
	f, err := os.Open(p.path)
	return f, p.size, err
}

func (p photo) remove() { os.Remove(p.path) }

// unusableError is a photo that can never be sent as it is (missing from
// storage, unreadable): the GP must delete it.
type unusableError struct{ reason string }

func (e *unusableError) Error() string { return e.reason }

// photo fetches the bytes to commit into a temporary file in dir: the
// thumbnailer's clean copy, or the original cleaned here when there is
// none yet. The caller removes it.
func (w *worker) photo(ctx context.Context, img session.Image, dir string) (photo, error) {
	if img.CleanKey != "" {
		body, _, ct, err := w.photos.Open(ctx, img.CleanKey)
		if errors.Is(err, blob.ErrNotFound) {
			return photo{}, &unusableError{"the clean copy of this photo is missing from storage"}
		}
		if err != nil {
			return photo{}, err
		}
		defer body.Close()
		if !strings.HasPrefix(ct, "image/") {
			ct = "image/jpeg"
		}
		p := photo{contentType: ct, width: img.Width, height: img.Height}
		f, err := os.CreateTemp(dir, "clinimg-commit-*")
		if err != nil {
			return photo{}, fmt.Errorf("temp file: %w", err)
		}
		p.path = f.Name()
		// Hashed as it is written: the file is read again only to send it.
		h := sha1.New()
		n, err := io.Copy(io.MultiWriter(f, h), body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			p.remove()
			return photo{}, fmt.Errorf("fetch clean copy: %w", err)
		}
		if err := p.setSum(n, h); err != nil {
			p.remove()
			return photo{}, err
		}
		return p, nil
	}
	body, _, _, err := w.photos.Open(ctx, img.S3Key)
	if errors.Is(err, blob.ErrNotFound) {
		return photo{}, &unusableError{"this photo is missing from storage"}
	}
	if err != nil {
		return photo{}, err
	}
	c, err := cleanPhoto(body, dir)
	body.Close()
	if errors.Is(err, errNotImage) && img.Status == session.ImageProcessing {
		// HEIC or WebP: only the thumbnailer can clean it; wait for it.
		return photo{}, fmt.Errorf("waiting for the clean copy: %w", err)
	}
	if err != nil {
		return photo{}, &unusableError{fmt.Sprintf("this photo cannot be read: %v", err)}
	}
	p := photo{path: c.path, contentType: c.contentType, width: c.width, height: c.height}
	if err := p.setSum(c.size, c.sha1); err != nil {
		p.remove()
		return photo{}, err
	}
	return p, nil
}

// setSum records the size and SHA-1 of the bytes written to the file.
func (p *photo) setSum(n int64, h hash.Hash) error {
	if n == 0 {
		return &unusableError{"this photo is empty"}
	}
	p.size, p.hash = n, base64.StdEncoding.EncodeToString(h.Sum(nil))
	return nil
}

// media is img's Media resource, under its server-given identifier.
func (w *worker) media(sess session.Session, img session.Image, p photo) fhir.Media {
	return fhir.NewMedia(fhir.Photo{
		IdentifierSystem: w.cfg.IdentifierSystem, ImageID: img.MediaIdentifier,
		PatientID: sess.PatientID, EncounterID: sess.EncounterID, CapturedAt: img.CapturedAt,
		ContentType: p.contentType, Title: title(img, p.contentType), Width: p.width, Height: p.height,
		BodySite: img.Metadata.BodySite, BodySiteDisplay: img.Metadata.BodySiteDisplay,
		Laterality: img.Metadata.Laterality, ViewType: img.Metadata.ViewType, Notes: img.Metadata.Notes,
		Consent: consentNote(sess), Hash: p.hash,
	})
}

// consentNote is the session's consent as the short standard note each
// Media carries, or "" when none was recorded (CONSENT_REQUIRED off).
func consentNote(sess session.Session) string {
	if sess.Consent == nil {
		return ""
	}
	return sess.Consent.ConsentNote()
}

// title names the attachment after the image id, with the extension of
// the content type (never the phone's file name).
func title(img session.Image, contentType string) string {
	ext := ".jpg"
	switch contentType {
	case "image/png":
		ext = ".png"
	case "image/webp":
		ext = ".webp"
	case "image/heic":
		ext = ".heic"
	}
	return "clinical-photo-" + path.Base(img.ID) + ext
}
