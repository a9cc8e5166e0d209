// Package hygiene makes an uploaded photo safe to keep and to send, in pure
// Go and without decoding pixels unless it must: it names a file's format by
// its magic bytes (Detect) and checks its header (Sniff: format, size, EXIF
// orientation, or a *Rejection that says what the file is instead), removes
// every metadata block that could identify a person or place from a JPEG
// (StripJPEG) or PNG (StripPNG), and turns decoded pixels upright by an EXIF
// orientation (Orient).
//
// The API sniffs uploads with it, the thumbnailer checks and strips photos
// before libvips decodes them, and the committer cleans a photo the
// thumbnailer has not reached yet. Everything here reads untrusted bytes and
// is fuzzed (FuzzSniff, FuzzStripJPEG, FuzzStripPNG).
package hygiene
