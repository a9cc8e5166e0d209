//go:build linux && cgo

package preview

/*
#include <malloc.h>

static void tune_malloc(void) {
#ifdef __GLIBC__
	// Few arenas: libvips and libjpeg run on whichever OS threads the Go
	// runtime hands out, and glibc's default of one arena per thread keeps
	// every thread's freed photo buffers resident.
	mallopt(M_ARENA_MAX, 2);
	// Buffers of 1 MiB and more come from mmap and go back to the kernel
	// when freed, instead of glibc raising the threshold to 32 MiB and
	// keeping whole decoded photos in its heap.
	mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
}
*/
import "C"

// tuneMalloc bounds the C heap of a process that decodes photo after photo.
func tuneMalloc() { C.tune_malloc() }
