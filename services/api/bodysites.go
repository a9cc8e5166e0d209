package api

import (
	"sort"
	"strings"
)

// BodySite is one entry of the body-site picker: a SNOMED CT code, its
// display name, and the everyday words a GP may type for it.
type BodySite struct {
	Code     string   `json:"code"`
	Display  string   `json:"display"`
	Synonyms []string `json:"synonyms,omitempty"`
}

// bodySites are common SNOMED CT body structures for clinical photos in
// general practice, with their fully specified display names. Laterality is
// coded separately (SNOMED 7771000 left, 24028007 right, 51440002 both), so
// the sites here are mostly unsided.
var bodySites = []BodySite{
	{"69536005", "Head structure", []string{"head"}},
	{"89545001", "Face structure", []string{"face", "facial"}},
	{"41695006", "Scalp structure", []string{"scalp"}},
	{"52795006", "Forehead structure", []string{"forehead", "brow"}},
	{"81745001", "Eye structure", []string{"eye", "ocular"}},
	{"80144004", "Eyelid structure", []string{"eyelid", "lid"}},
	{"117590005", "Ear structure", []string{"ear", "auricle"}},
	{"45206002", "Nose structure", []string{"nose", "nasal"}},
	{"48477009", "Lip structure", []string{"lip", "lips"}},
	{"123851003", "Mouth region structure", []string{"mouth", "oral"}},
	{"60819002", "Buccal region of face", []string{"cheek", "buccal"}},
	{"30291003", "Chin structure", []string{"chin"}},
	{"45048000", "Neck structure", []string{"neck", "cervical"}},
	{"51185008", "Thoracic structure", []string{"chest", "thorax"}},
	{"76752008", "Breast structure", []string{"breast"}},
	{"818983003", "Abdomen structure", []string{"abdomen", "belly", "tummy"}},
	{"77568009", "Back structure", []string{"back"}},
	{"37822005", "Lumbar region structure", []string{"lower back", "lumbar"}},
	{"46862004", "Buttock structure", []string{"buttock", "gluteal", "bottom"}},
	{"26893007", "Inguinal region structure", []string{"groin", "inguinal"}},
	{"16982005", "Shoulder region structure", []string{"shoulder"}},
	{"53120007", "Upper limb structure", []string{"arm", "upper limb"}},
	{"40983000", "Upper arm structure", []string{"upper arm"}},
	{"368208006", "Left upper arm structure", []string{"left arm"}},
	{"368209003", "Right upper arm structure", []string{"right arm"}},
	{"127949000", "Elbow region structure", []string{"elbow"}},
	{"14975008", "Forearm structure", []string{"forearm", "lower arm"}},
	{"74670003", "Wrist region structure", []string{"wrist"}},
	{"85562004", "Hand structure", []string{"hand"}},
	{"21547004", "Palm structure", []string{"palm", "palmar"}},
	{"7569003", "Finger structure", []string{"finger", "digit"}},
	{"76505004", "Thumb structure", []string{"thumb"}},
	{"72651009", "Nail structure", []string{"nail", "fingernail", "toenail"}},
	{"61685007", "Lower limb structure", []string{"leg", "lower limb"}},
	{"29836001", "Hip region structure", []string{"hip"}},
	{"68367000", "Thigh structure", []string{"thigh"}},
	{"72696002", "Knee region structure", []string{"knee"}},
	{"30021000", "Lower leg structure", []string{"lower leg", "shin"}},
	{"53840002", "Calf of leg structure", []string{"calf"}},
	{"70258002", "Ankle joint structure", []string{"ankle"}},
	{"56459004", "Foot structure", []string{"foot"}},
	{"76853006", "Dorsum of foot structure", []string{"top of foot", "dorsum"}},
	{"57999000", "Sole of foot structure", []string{"sole", "plantar"}},
	{"76986006", "Heel structure", []string{"heel"}},
	{"29707007", "Toe structure", []string{"toe"}},
	{"78883009", "Great toe structure", []string{"big toe", "great toe", "hallux"}},
	{"39937001", "Skin structure", []string{"skin"}},
	{"18911002", "Penile structure", []string{"penis", "penile"}},
	{"45292006", "Vulval structure", []string{"vulva", "vulval"}},
	{"53505006", "Anal structure", []string{"anus", "anal", "perianal"}},
}

var bodySiteDisplay = func() map[string]string {
	m := make(map[string]string, len(bodySites))
	for _, b := range bodySites {
		m[b.Code] = b.Display
	}
	return m
}()

// searchBodySites ranks the body sites for what a GP typed: every word of q
// must begin a word of the site's display name or a synonym (or, failing
// that, appear inside one), and the code itself matches too. Whole-name
// matches come first, then names that start with q, then word prefixes, then
// substrings; among equals the shortest name first, then the list's order.
// An empty q lists every site.
func searchBodySites(q string) []BodySite {
	q = strings.ToLower(strings.TrimSpace(q))
	if q == "" {
		return bodySites
	}
	type hit struct {
		site       BodySite
		rank, size int
	}
	var hits []hit
	for _, b := range bodySites {
		if r, size, ok := siteRank(b, q); ok {
			hits = append(hits, hit{b, r, size})
		}
	}
	sort.SliceStable(hits, func(a, b int) bool {
		if hits[a].rank != hits[b].rank {
			return hits[a].rank < hits[b].rank
		}
		return hits[a].size < hits[b].size
	})
	out := make([]BodySite, len(hits))
	for i, h := range hits {
		out[i] = h.site
	}
	return out
}

// siteRank is how well q names b (lower is better) and the length of the
// name it matched (the shorter, the closer), and whether it does.
func siteRank(b BodySite, q string) (rank, size int, ok bool) {
	if b.Code == q {
		return 0, 0, true
	}
	for _, name := range append([]string{strings.TrimSuffix(strings.ToLower(b.Display), " structure")}, b.Synonyms...) {
		r, hit := nameRank(name, q)
		if hit && (!ok || r < rank || r == rank && len(name) < size) {
			rank, size, ok = r, len(name), true
		}
	}
	return rank, size, ok
}

func nameRank(name, q string) (int, bool) {
	switch {
	case name == q:
		return 1, true
	case strings.HasPrefix(name, q):
		return 2, true
	}
	words := strings.Fields(name)
	rank := 3
	for _, w := range strings.Fields(q) {
		prefix, inside := false, false
		for _, nw := range words {
			prefix = prefix || strings.HasPrefix(nw, w)
			inside = inside || strings.Contains(nw, w)
		}
		switch {
		case prefix:
		case inside:
			rank = 4
		default:
			return 0, false
		}
	}
	return rank, true
}
