package audit

import (
	"encoding/csv"
	"io"
	"strconv"
	"strings"
	"time"
)

// CSVHeader names the columns of WriteCSV.
var CSVHeader = []string{"at", "step", "image_id", "by", "source", "device", "bytes", "content_type", "sha256", "sha1",
	"fields", "method", "purposes", "commit_id", "attempt", "outcome", "media_id", "media_ids", "detail", "session_id", "version", "event_id"}

// WriteCSV writes the records as CSV for export, one row each under
// CSVHeader. A cell that a spreadsheet would read as a formula is quoted
// with a leading apostrophe, except the hashes, which are ours.
func WriteCSV(w io.Writer, recs []Record) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(CSVHeader); err != nil {
		return err
	}
	num := func(n int64) string {
		if n == 0 {
			return ""
		}
		return strconv.FormatInt(n, 10)
	}
	for _, r := range recs {
		row := []string{r.At.UTC().Format(time.RFC3339Nano), string(r.Step), r.ImageID, r.By, r.Source, r.Device,
			num(r.Bytes), r.ContentType, r.SHA256, r.SHA1, strings.Join(r.Fields, ";"), r.Method, strings.Join(r.Purposes, ";"),
			r.CommitID, num(int64(r.Attempt)), r.Outcome, r.MediaID, strings.Join(r.MediaIDs, ";"), r.Detail,
			r.SessionID, strconv.FormatInt(r.Version, 10), r.EventID}
		for i, c := range row {
			if i != 8 && i != 9 { // hashes are ours; base64 may start with '+'
				row[i] = cell(c)
			}
		}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// cell defuses spreadsheet formulas (CSV injection).
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
