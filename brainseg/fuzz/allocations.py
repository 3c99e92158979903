"""Every byte a process allocates, native code included, counted by a small malloc shim.

tracemalloc sees Python's and numpy's allocations, not those of libpng, libtiff, libjpeg or zlib
inside OpenCV, which is where a lying header costs memory. `SHIM` is a C file that wraps malloc,
calloc, realloc, free and the aligned allocators around glibc's own (`__libc_malloc`...) and keeps
the bytes live, their peak since the last reset, and the largest single request (a request that
failed still counts). `build` compiles it with the system C compiler; a process started with the
library in LD_PRELOAD (and PYTHONMALLOC=malloc, so that Python's small objects go through malloc
too) can read the counts with `Allocations`. Linux with glibc only.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

static size_t live, peak, largest;

static void asked(size_t n) {
    size_t seen = __atomic_load_n(&largest, __ATOMIC_RELAXED);
    while (n > seen && !__atomic_compare_exchange_n(&largest, &seen, n, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

static void grew(void *p) {
    size_t now = __atomic_add_fetch(&live, malloc_usable_size(p), __ATOMIC_RELAXED);
    size_t top = __atomic_load_n(&peak, __ATOMIC_RELAXED);
    while (now > top && !__atomic_compare_exchange_n(&peak, &top, now, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

static void shrank(void *p) { __atomic_sub_fetch(&live, malloc_usable_size(p), __ATOMIC_RELAXED); }

void *malloc(size_t n) { asked(n); void *p = __libc_malloc(n); if (p) grew(p); return p; }

void *calloc(size_t k, size_t n) {
    size_t total;
    if (!__builtin_mul_overflow(k, n, &total)) asked(total); else asked((size_t)-1);
    void *p = __libc_calloc(k, n);
    if (p) grew(p);
    return p;
}

void free(void *p) { if (p) { shrank(p); __libc_free(p); } }

void *realloc(void *old, size_t n) {
    asked(n);
    size_t before = old ? malloc_usable_size(old) : 0;
    void *p = __libc_realloc(old, n);
    if (p) {
        __atomic_sub_fetch(&live, before, __ATOMIC_RELAXED);
        grew(p);
    } else if (old && n == 0) {
        __atomic_sub_fetch(&live, before, __ATOMIC_RELAXED);
    }
    return p;
}

void *memalign(size_t align, size_t n) { asked(n); void *p = __libc_memalign(align, n); if (p) grew(p); return p; }
void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }
void *valloc(size_t n) { return memalign(4096, n); }
void *pvalloc(size_t n) { return memalign(4096, (n + 4095) & ~(size_t)4095); }

int posix_memalign(void **out, size_t align, size_t n) {
    if (align % sizeof(void *) || (align & (align - 1))) return EINVAL;
    void *p = memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

size_t brainseg_live(void) { return __atomic_load_n(&live, __ATOMIC_RELAXED); }
size_t brainseg_peak(void) { return __atomic_load_n(&peak, __ATOMIC_RELAXED); }
size_t brainseg_largest(void) { return __atomic_load_n(&largest, __ATOMIC_RELAXED); }
void brainseg_reset(void) {
    __atomic_store_n(&peak, __atomic_load_n(&live, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
    __atomic_store_n(&largest, 0, __ATOMIC_RELAXED);
}
"""


def build(folder: Path | None = None) -> Path:
    """The shim compiled to a shared library (cached by its source's hash); RuntimeError without a C compiler."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("counting native allocations needs a C compiler (cc or gcc) to build the malloc shim")
    digest = hashlib.sha256(SHIM.encode()).hexdigest()[:12]
    folder = Path(folder or tempfile.gettempdir())
    library = folder / f"brainseg-allocations-{digest}.so"
    if not library.is_file():
        source = folder / f"brainseg-allocations-{digest}.c"
        source.write_text(SHIM)
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(source)], check=True,
                       capture_output=True, text=True)
        partial.replace(library)
    return library


def environment(library: Path) -> dict[str, str]:
    """The environment variables that make a child process count its allocations with `library`."""
    return {"LD_PRELOAD": str(library), "PYTHONMALLOC": "malloc"}


class Allocations:
    """The counts of the shim this process was started with (see `environment`)."""

    def __init__(self) -> None:
        process = ctypes.CDLL(None)
        try:
            self._live, self._peak, self._largest = (process.brainseg_live, process.brainseg_peak,
                                                     process.brainseg_largest)
        except AttributeError:
            raise RuntimeError("this process was not started with the allocation shim in LD_PRELOAD") from None
        self._reset = process.brainseg_reset
        for function in (self._live, self._peak, self._largest):
            function.restype = ctypes.c_size_t

    @staticmethod
    def available() -> bool:
        """Whether this process counts its allocations."""
        return hasattr(ctypes.CDLL(None), "brainseg_peak")

    def start(self) -> int:
        """Forget the peak and the largest request so far; the bytes live now."""
        self._reset()
        return int(self._live())

    def peak_above(self, start: int) -> int:
        """Bytes of the highest point since `start` above what was live then."""
        return max(0, int(self._peak()) - start)

    def largest(self) -> int:
        """The largest single request since the last `start`, granted or not."""
        return int(self._largest())
