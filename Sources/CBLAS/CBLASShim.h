// CBLASShim: OpenBLAS's CBLAS interface plus the few OpenBLAS extensions kat-dist
// uses (core name, thread count). Debian puts cblas.h under an OpenBLAS-specific
// include directory that pkg-config names, so this header only forwards to it.
#include <cblas.h>
