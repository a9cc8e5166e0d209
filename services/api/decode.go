package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	"github.com/gin-gonic/gin"
)

// maxBody is the largest JSON body any endpoint takes: metadata and notes,
// never image bytes (those go straight to S3).
const maxBody = 64 << 10

// decodeJSON reads one JSON value into v, refusing unknown fields, trailing
// data, bodies over maxBody and other content types. With allowEmpty an
// absent body leaves v as it is.
func decodeJSON(c *gin.Context, v any, allowEmpty bool) error {
	r := c.Request
	raw, err := io.ReadAll(http.MaxBytesReader(c.Writer, r.Body, maxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return errBodyTooLarge
	}
	if err != nil {
		return clientErr(http.StatusBadRequest, "bad_body", "could not read the request body")
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		if allowEmpty {
			return nil
		}
		return clientErr(http.StatusBadRequest, "invalid_json", "a JSON body is required")
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return errContentType
	}
	return decodeBytes(raw, v)
}

// decodeBytes is the strict JSON decoding shared by every request type.
func decodeBytes(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return clientErr(http.StatusBadRequest, "invalid_json", jsonProblem(err))
	}
	if dec.More() {
		return clientErr(http.StatusBadRequest, "invalid_json", "one JSON object expected")
	}
	return nil
}

func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type.String())
	case errors.As(err, &se):
		return "malformed JSON"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON"
	}
	// json's unknown-field message names the field, which helps the client.
	return err.Error()
}
