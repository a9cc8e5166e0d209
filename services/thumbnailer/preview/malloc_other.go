//go:build !(linux && cgo)

package preview

func tuneMalloc() {}
