package fhir

import "strings"

// PhotoViewSystem is the code system for the photo views SNOMED CT has no
// qualifier value for (close-up, dermoscopic). The API accepts no view that is
// not coded in one system or the other.
const PhotoViewSystem = "https://clinicalimages.nz/fhir/CodeSystem/photo-view"

// Term is one choice the screens offer for a coded field: the value the API
// stores (Code), the word a GP reads (Display), and how it is coded in the
// Media.
type Term struct {
	Code    string `json:"code"`
	Display string `json:"display"`
	Coding  Coding `json:"coding"`
}

// Views are the accepted photo views, in the order the screens list them.
// This list is the only place a view is defined: the API validates against
// it, the pages offer it (GET /api/vocabulary), and NewMedia codes from it.
var Views = []Term{
	{"anterior", "Anterior", Coding{System: SNOMED, Code: "255549009", Display: "Anterior"}},
	{"posterior", "Posterior", Coding{System: SNOMED, Code: "255551008", Display: "Posterior"}},
	{"lateral", "Lateral", Coding{System: SNOMED, Code: "49370004", Display: "Lateral"}},
	{"medial", "Medial", Coding{System: SNOMED, Code: "255561001", Display: "Medial"}},
	{"superior", "Superior", Coding{System: SNOMED, Code: "264217000", Display: "Superior"}},
	{"inferior", "Inferior", Coding{System: SNOMED, Code: "261089000", Display: "Inferior"}},
	{"close-up", "Close-up", Coding{System: PhotoViewSystem, Code: "close-up", Display: "Close-up"}},
	{"dermoscopic", "Dermoscopic", Coding{System: PhotoViewSystem, Code: "dermoscopic", Display: "Dermoscopic"}},
}

// Lateralities are the accepted sides, in the order the screens list them,
// with their SNOMED CT qualifiers. R4 Media has no laterality element, so the
// qualifier goes beside the body site code. "bilateral" reads "Both sides"
// on every screen.
var Lateralities = []Term{
	{"left", "Left", Coding{System: SNOMED, Code: "7771000", Display: "Left"}},
	{"right", "Right", Coding{System: SNOMED, Code: "24028007", Display: "Right"}},
	{"bilateral", "Both sides", Coding{System: SNOMED, Code: "51440002", Display: "Right and left"}},
}

func lookup(terms []Term, code string) (Term, bool) {
	code = strings.ToLower(code)
	for _, t := range terms {
		if t.Code == code {
			return t, true
		}
	}
	return Term{}, false
}

// ViewTerm returns the accepted view with this code.
func ViewTerm(code string) (Term, bool) { return lookup(Views, code) }

// LateralityTerm returns the accepted side with this code.
func LateralityTerm(code string) (Term, bool) { return lookup(Lateralities, code) }

// LateralityCoding returns the SNOMED CT qualifier for left, right or
// bilateral.
func LateralityCoding(l string) (Coding, bool) {
	t, ok := LateralityTerm(l)
	return t.Coding, ok
}

// Codes lists the codes of terms, for messages.
func Codes(terms []Term) []string {
	out := make([]string, len(terms))
	for i, t := range terms {
		out[i] = t.Code
	}
	return out
}
