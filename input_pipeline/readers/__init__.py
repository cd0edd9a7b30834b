"""Dataset readers: one module per on-disk layout, all yielding the common schema (common.py).

`READERS` maps a dataset name to its reader module, imported on first use, so that a module
that fails to import (or is missing) does not break the others:

  from input_pipeline import readers
  for ex in readers.READERS["raf_db"].read("/data/RAF-DB", split="train"):
    ...

SynthFace has two parts: `synthface` reads its BP4D-like tree; its RAF-like tree (`<out>/RAF`)
is read by `raf_db`.
"""

from __future__ import annotations

import collections.abc
import importlib
import types
from typing import Iterator

_MODULES = {
  "bp4d": "bp4d",
  "bp4d_plus": "bp4d_plus",
  "disfa": "disfa",
  "raf_db": "raf_db",
  "ferplus": "ferplus",
  "affectnet": "affectnet",
  "manifest": "manifest",
  "synthface": "synthface",
}


class _LazyRegistry(collections.abc.Mapping):
  """name -> reader module, importing `input_pipeline.readers.<module>` on first access."""

  def __getitem__(self, name: str) -> types.ModuleType:
    if name not in _MODULES:
      raise KeyError(f"unknown dataset {name!r}; known: {sorted(_MODULES)}")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")

  def __iter__(self) -> Iterator[str]:
    return iter(_MODULES)

  def __len__(self) -> int:
    return len(_MODULES)


READERS = _LazyRegistry()


def get(name: str) -> types.ModuleType:
  """The reader module of dataset `name` (KeyError listing the known names otherwise)."""
  return READERS[name]
