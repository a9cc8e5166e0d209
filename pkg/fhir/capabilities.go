package fhir

import (
	"fmt"
	"sort"
	"strings"
)

// Capabilities are the optional things a FHIR server offers for Media. ALEX
// publishes none of them, so each is off unless configured.
type Capabilities struct {
	// ConditionalCreate: POST with If-None-Exist: identifier=system|value
	// creates nothing when one Media already has the identifier.
	ConditionalCreate bool
	// Delete: DELETE /Media/{id}.
	Delete bool
	// EnteredInError: PATCH /Media/{id} (JSON Patch) setting status to
	// entered-in-error.
	EnteredInError bool
	// Search: GET /Media?identifier=system|value.
	Search bool
	// Transaction: POST [base] with a transaction Bundle.
	Transaction bool
}

var capNames = map[string]func(*Capabilities) *bool{
	"conditional-create": func(c *Capabilities) *bool { return &c.ConditionalCreate },
	"delete":             func(c *Capabilities) *bool { return &c.Delete },
	"entered-in-error":   func(c *Capabilities) *bool { return &c.EnteredInError },
	"search":             func(c *Capabilities) *bool { return &c.Search },
	"transaction":        func(c *Capabilities) *bool { return &c.Transaction },
}

// ParseCapabilities reads a comma-separated list such as
// "conditional-create,delete,entered-in-error,search,transaction".
func ParseCapabilities(s string) (Capabilities, error) {
	var c Capabilities
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" || f == "none" {
			continue
		}
		p, ok := capNames[f]
		if !ok {
			return Capabilities{}, fmt.Errorf("unknown capability %q (want conditional-create, delete, entered-in-error, search, transaction)", f)
		}
		*p(&c) = true
	}
	return c, nil
}

// String is the comma-separated list ParseCapabilities reads.
func (c Capabilities) String() string {
	var out []string
	for name, p := range capNames {
		if *p(&c) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
