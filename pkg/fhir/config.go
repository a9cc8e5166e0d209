package fhir

import (
	"time"

	"github.com/clinicalimages/clinimg/pkg/config"
)

// ReadConfig reads the practice's ALEX settings (ALEX_*) from r, each
// required but ALEX_APP_ID, with timeout as ALEX_REQUEST_TIMEOUT's
// default. Problems are reported through r, with the rest of the
// service's configuration.
func ReadConfig(r *config.Reader, timeout time.Duration) Config {
	return Config{
		BaseURL:      r.Required("ALEX_API_URL"),
		TokenURL:     r.Required("ALEX_OAUTH_TOKEN_URL"),
		ClientID:     r.Required("ALEX_CLIENT_ID"),
		ClientSecret: r.RequiredSecret("ALEX_CLIENT_SECRET"),
		Scope:        r.Required("ALEX_SCOPE"),
		FacilityID:   r.Required("ALEX_FACILITY_ID"),
		AppID:        r.String("ALEX_APP_ID", "clinicalimages"),
		Timeout:      r.Duration("ALEX_REQUEST_TIMEOUT", timeout),
	}
}
