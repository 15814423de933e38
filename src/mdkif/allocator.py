"""Keep freed memory in the process (glibc malloc) during CPU training, scoring and serving.

A training step on a CPU allocates and frees the same large activation buffers every micro-batch (logits
over the vocabulary, MLP activations, their gradients). glibc serves every block over its mmap threshold
(at most 32 MiB on 64-bit, usually much less) with a fresh `mmap` and gives it back on `free`, and trims the
heap top as soon as 128 KiB are free there, so each step page-faults its buffers in again and the kernel zeroes
them: in a bf16 SmolLM2-135M step that was about a fifth of the step (1.99 -> 1.57 s,
bench/results/train.md), with the system time halved. `keep_freed_memory()` tells malloc (via `mallopt`) to
serve large blocks from the heap and to keep up to `trim_mib` of free memory at its top, so the buffers are
reused. The process's peak RSS is unchanged (the memory was used at the peak anyway); what it holds between
peaks is at most `trim_mib` more.

`mdkif.models.load_model` calls it in every process that loads a model onto the CPU (training workers,
evaluation actors, router fits, Serve replicas). It does nothing on other C libraries (musl, macOS) and
can be turned off with `MDKIF_MALLOC_TUNING=0`.

Kept memory fragments: a training worker that trains several skills one after another (each with its
own sequence lengths) held 7.7 GB after its third skill with nothing released. `release_freed_memory()`
(`malloc_trim`) gives every free page back to the kernel; the training loop calls it after each job and at
each validation, the evaluation worker when it swaps models, so what a process holds between peaks stays
what it uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4

_done: dict[str, bool] = {}
_LIBC: list = []


def _libc() -> object | None:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def release_freed_memory() -> bool:
    """Give free heap pages back to the kernel (glibc `malloc_trim(0)`); True when something was released."""
    if not _done.get("set"):
        return False  # nothing kept beyond glibc's own habits
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))


def keep_freed_memory(trim_mib: int = 512) -> bool:
    """Make glibc keep freed blocks for reuse (once per process); returns whether the setting took effect."""
    if "set" in _done:
        return _done["set"]
    ok = False
    if os.environ.get("MDKIF_MALLOC_TUNING", "1").strip().lower() not in ("0", "false", "off", "no"):
        mallopt = getattr(_libc(), "mallopt", None)  # not glibc: nothing to tune
        if mallopt is not None:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            # 1 on success. With mmap off, large blocks come from the heap and stay there once freed.
            ok = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, trim_mib << 20))
    log.debug("malloc keeps freed memory: %s", ok)
    _done["set"] = ok
    return ok
