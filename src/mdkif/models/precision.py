"""Which precision a model computes in, decided once for every stage: `model.dtype`.

`auto` is bf16 wherever the hardware multiplies bf16 natively, fp32 elsewhere:

- on CUDA, bf16 on a GPU that supports it, fp16 on an older one (V100, T4);
- on a CPU, bf16 when the CPU reports AMX (`amx_bf16`: Intel Sapphire Rapids and later) or AVX-512 BF16
  (`avx512_bf16`: Intel Cooper Lake, AMD Zen 4 and later), whose bf16 matrix products run several times
  faster than fp32 ones (measured in `bench/results/train.md`); fp32 on every other CPU, where bf16 would be
  emulated and slower.

`MDKIF_CPU_BF16` overrides the CPU check (`0`: always fp32, `1`: always bf16, unset or `auto`: ask the
CPU); the test suite sets `0` so results do not depend on the machine, and tests of the bf16 path set `1`.
`float32` / `bfloat16` / `float16` in a config are taken as they are.

Only the frozen base computes in bf16: trainable adapters, their optimizer state and AdaLoRA's importance
scores stay fp32 (`mdkif.skills.adapters`), and adapters, exports and merged model copies are saved in fp32.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # in order of preference when the log names the reason
ENV = "MDKIF_CPU_BF16"


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux); empty where there is no /proc/cpuinfo."""
    try:
        text = path.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_reason(flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether `auto` means bf16 on this CPU, and why (the flag found, or the override, or what is missing)."""
    override = os.environ.get(ENV, "auto").strip().lower()
    if override in ("0", "false", "off", "no"):
        return False, f"{ENV}={override}"
    if override in ("1", "true", "on", "yes"):
        return True, f"{ENV}={override}"
    if override not in ("", "auto"):
        raise ValueError(f"{ENV}={override!r}: expected auto, 0 or 1")
    flags = cpu_flags() if flags is None else flags
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"the CPU reports {found[0]}"
    return False, f"the CPU reports none of {', '.join(CPU_BF16_FLAGS)}"


@functools.cache
def _log_once(device: str, dtype: str, why: str) -> None:
    log.info("precision auto: %s on %s (%s)", dtype, device, why)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The compute dtype of `model.dtype` on `device`; `auto` as the module docstring says, logged once."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        _log_once(str(device), "float16", "this GPU has no bf16")
        return torch.float16
    if device.type == "cpu":
        bf16, why = cpu_bf16_reason()
        _log_once("cpu", "bfloat16" if bf16 else "float32", why)
        return torch.bfloat16 if bf16 else torch.float32
    return torch.float32


def storage_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype a model copy is *saved* in (a merged base between pipeline steps): what `dtype` names, but
    fp32 for `auto` on a CPU, where bf16 is a compute choice and the checkpoint keeps full precision."""
    if dtype == "auto" and device.type == "cpu":
        return torch.float32
    return resolve_dtype(dtype, device)


def attention_kernel(setting: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """The `attn_implementation` to load with: what `setting` names, or for `auto` eager on a CPU computing
    in bf16 (measured faster there, bench/results/train.md) and transformers' own default (None) elsewhere."""
    if setting != "auto":
        return setting
    return "eager" if device.type == "cpu" and dtype == torch.bfloat16 else None
