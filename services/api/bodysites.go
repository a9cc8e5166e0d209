package api

// BodySite is one entry of the desktop's body-site picker.
type BodySite struct {
	Code    string `json:"code"`
	Display string `json:"display"`
}

// bodySites are common SNOMED CT body structures for clinical photos in
// general practice, with their fully specified display names. Laterality is
// coded separately (SNOMED 7771000 left, 24028007 right, 51440002 both), so
// the sites here are mostly unsided.
var bodySites = []BodySite{
	{"69536005", "Head structure"},
	{"89545001", "Face structure"},
	{"41695006", "Scalp structure"},
	{"52795006", "Forehead structure"},
	{"81745001", "Eye structure"},
	{"80144004", "Eyelid structure"},
	{"117590005", "Ear structure"},
	{"45206002", "Nose structure"},
	{"48477009", "Lip structure"},
	{"123851003", "Mouth region structure"},
	{"60819002", "Buccal region of face"},
	{"30291003", "Chin structure"},
	{"45048000", "Neck structure"},
	{"51185008", "Thoracic structure"},
	{"76752008", "Breast structure"},
	{"818983003", "Abdomen structure"},
	{"77568009", "Back structure"},
	{"37822005", "Lumbar region structure"},
	{"46862004", "Buttock structure"},
	{"26893007", "Inguinal region structure"},
	{"16982005", "Shoulder region structure"},
	{"53120007", "Upper limb structure"},
	{"40983000", "Upper arm structure"},
	{"368208006", "Left upper arm structure"},
	{"368209003", "Right upper arm structure"},
	{"127949000", "Elbow region structure"},
	{"14975008", "Forearm structure"},
	{"74670003", "Wrist region structure"},
	{"85562004", "Hand structure"},
	{"21547004", "Palm structure"},
	{"7569003", "Finger structure"},
	{"76505004", "Thumb structure"},
	{"72651009", "Nail structure"},
	{"61685007", "Lower limb structure"},
	{"29836001", "Hip region structure"},
	{"68367000", "Thigh structure"},
	{"72696002", "Knee region structure"},
	{"30021000", "Lower leg structure"},
	{"53840002", "Calf of leg structure"},
	{"70258002", "Ankle joint structure"},
	{"56459004", "Foot structure"},
	{"76853006", "Dorsum of foot structure"},
	{"57999000", "Sole of foot structure"},
	{"76986006", "Heel structure"},
	{"29707007", "Toe structure"},
	{"78883009", "Great toe structure"},
	{"39937001", "Skin structure"},
	{"18911002", "Penile structure"},
	{"45292006", "Vulval structure"},
	{"53505006", "Anal structure"},
}

var bodySiteDisplay = func() map[string]string {
	m := make(map[string]string, len(bodySites))
	for _, b := range bodySites {
		m[b.Code] = b.Display
	}
	return m
}()
