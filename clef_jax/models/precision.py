"""Compute precision: `model.dtype` = 'float32' | 'bfloat16' | 'auto'.

'auto' is bf16 where the backend has fast bf16 matrix units and fp32 elsewhere:
  TPU                      bfloat16 (MXU)
  GPU, compute capability ≥ 8.0 (A100, H100, …)   bfloat16 (tensor cores)
  CPU with AMX-BF16 or AVX512-BF16 (/proc/cpuinfo flags `amx_bf16`, `avx512_bf16`)   bfloat16
  anything else            float32
Whatever the compute dtype, params, optimizer state, losses, softmaxes, LayerNorm statistics and
the output embeddings are fp32 (see models/vit.py and clef_jax/losses.py).
"""

from __future__ import annotations

import functools
import pathlib

DTYPES = ("float32", "bfloat16", "auto")


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
  """The bf16 matrix-unit ISA flags of this CPU (Linux /proc/cpuinfo; () elsewhere)."""
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
  except OSError:
    return ()
  flags = set()
  for line in text.splitlines():
    if line.startswith("flags"):
      flags.update(line.split(":", 1)[1].split())
      break
  return tuple(f for f in ("amx_bf16", "avx512_bf16") if f in flags)


def fast_bf16(device=None) -> bool:
  """Whether `device` (default: JAX's first device) has fast bf16 matmuls."""
  import jax  # pylint: disable=g-import-not-at-top

  device = device or jax.devices()[0]
  if device.platform == "tpu":
    return True
  if device.platform == "gpu":
    cc = getattr(device, "compute_capability", None)
    try:
      return cc is not None and float(cc) >= 8.0
    except ValueError:
      return False
  if device.platform == "cpu":
    return bool(cpu_bf16_flags())
  return False


def resolve(dtype: str) -> str:
  """'auto' -> 'bfloat16' or 'float32' for this machine; other names pass through (checked)."""
  if dtype not in DTYPES:
    raise ValueError(f"model.dtype={dtype!r}: expected one of {list(DTYPES)}")
  if dtype != "auto":
    return dtype
  return "bfloat16" if fast_bf16() else "float32"
