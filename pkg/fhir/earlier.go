package fhir

import (
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Earlier is one Media already in a patient's record, as the widget shows
// it beside a new photo: when it was taken, where, and its note.
type Earlier struct {
	ID              string
	Taken           time.Time // createdDateTime, else issued; zero if neither
	BodySite        string    // the first SNOMED CT code of bodySite
	BodySiteDisplay string
	Laterality      string // a code of Lateralities, from the qualifier beside the site
	View            string // the view's display or text
	Note            string // the notes, joined by newlines
	ContentType     string
	HasData         bool // the search answer carried content.data
}

// PatientMedia lists the patient's Media by NHI, the one Media search ALEX
// allows, newest first; entered-in-error ones are left out, and so is the
// OperationOutcome entry ALEX puts in an empty result. An empty nhi gives
// none without asking.
func (c *Client) PatientMedia(ctx context.Context, nhi string) ([]Earlier, error) {
	if nhi == "" {
		return nil, nil
	}
	var out []Earlier
	err := c.eachMedia(ctx, url.Values{"patient.identifier": {NHISystem + "|" + nhi}}, func(m Media) {
		if m.Status == "entered-in-error" {
			return
		}
		e := Earlier{ID: m.ID}
		if m.Content != nil {
			e.ContentType, e.HasData = m.Content.ContentType, m.Content.Data != ""
		}
		for _, s := range []string{m.CreatedDateTime, m.Issued} {
			if t, err := time.Parse(time.RFC3339, s); err == nil && s != "" {
				e.Taken = t.UTC()
				break
			}
		}
		if m.BodySite != nil {
			for _, cd := range m.BodySite.Coding {
				if lat, ok := lateralityOf(cd); ok {
					e.Laterality = cmp.Or(e.Laterality, lat)
				} else if e.BodySite == "" && cd.System == SNOMED {
					e.BodySite, e.BodySiteDisplay = cd.Code, cd.Display
				}
			}
			// The text names the side too ("Forearm structure (left)").
			e.BodySiteDisplay = cmp.Or(m.BodySite.Text, e.BodySiteDisplay)
		}
		if m.View != nil {
			e.View = m.View.Text
			for _, cd := range m.View.Coding {
				e.View = cmp.Or(e.View, cd.Display, cd.Code)
			}
		}
		var notes []string
		for _, n := range m.Note {
			notes = append(notes, n.Text)
		}
		e.Note = strings.Join(notes, "\n")
		out = append(out, e)
	})
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(out, func(a, b Earlier) int { return b.Taken.Compare(a.Taken) })
	return out, nil
}

// lateralityOf reads a laterality qualifier (SNOMED CT left, right, both)
// as the code of Lateralities it stands for.
func lateralityOf(cd Coding) (string, bool) {
	for _, t := range Lateralities {
		if cd.System == t.Coding.System && cd.Code == t.Coding.Code {
			return t.Code, true
		}
	}
	return "", false
}

// MediaContent reads Media/{id} and returns its photo's bytes and type.
func (c *Client) MediaContent(ctx context.Context, id string) ([]byte, string, error) {
	var m Media
	if err := c.getJSON(ctx, "read", "Media/"+url.PathEscape(id), &m); err != nil {
		return nil, "", err
	}
	if m.Content == nil {
		return nil, "", fmt.Errorf("read media %s: it carries no photo", id)
	}
	b, err := base64.StdEncoding.DecodeString(m.Content.Data)
	if err != nil || len(b) == 0 {
		return nil, "", fmt.Errorf("read media %s: it carries no photo", id)
	}
	return b, cmp.Or(m.Content.ContentType, "application/octet-stream"), nil
}

// eachMedia runs GET /Media with query over every page and calls fn with
// each Media entry; other entries (the OperationOutcome of an empty
// result) are skipped.
func (c *Client) eachMedia(ctx context.Context, query url.Values, fn func(Media)) error {
	next := "Media?" + query.Encode()
	for page := 0; next != "" && page < 100; page++ {
		var b struct {
			Link  []BundleLink `json:"link"`
			Entry []struct {
				Resource Media `json:"resource"`
			} `json:"entry"`
		}
		if err := c.getJSON(ctx, "search", next, &b); err != nil {
			return err
		}
		for _, e := range b.Entry {
			if e.Resource.ResourceType == "Media" {
				fn(e.Resource)
			}
		}
		next = ""
		for _, l := range b.Link {
			if l.Relation == "next" {
				next = l.URL
			}
		}
	}
	return nil
}
