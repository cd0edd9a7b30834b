"""Subject-exclusive fold lists (BP4D, DISFA) and the seeded k-fold used where none exists (BP4D+).

Convention (ME-GraphAU / JAA-Net, DATASETS.md): subjects are grouped into numbered *parts*
1..k; the examples carry their subject's part number in `fold`. Evaluation fold f (1-based)
tests on part k + 1 - f and trains on the others, so with k = 3:

  fold 1: test part 3, train parts 1 + 2
  fold 2: test part 2, train parts 1 + 3
  fold 3: test part 1, train parts 2 + 3

`test_part(fold)` and `train_parts(fold)` implement this mapping; nothing else should.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping

import numpy as np

Parts = dict[int, tuple[str, ...]]

BP4D_PARTS: Parts = {
  1: (
    "F001",
    "M007",
    "F018",
    "F008",
    "F002",
    "M004",
    "F010",
    "F009",
    "M012",
    "M001",
    "F016",
    "M014",
    "F023",
    "M008",
  ),
  2: (
    "M011",
    "F003",
    "M010",
    "M002",
    "F005",
    "F022",
    "M018",
    "M017",
    "F013",
    "M016",
    "F020",
    "F011",
    "M013",
    "M005",
  ),
  3: (
    "F007",
    "F015",
    "F006",
    "F019",
    "M006",
    "M009",
    "F012",
    "M003",
    "F004",
    "F021",
    "F017",
    "M015",
    "F014",
  ),
}

DISFA_PARTS: Parts = {
  1: ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
  2: ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
  3: ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
}


def _check_fold(fold: int, num_parts: int) -> None:
  if num_parts < 2:
    raise ValueError(f"need at least 2 parts for a k-fold protocol, got {num_parts}")
  if not 1 <= fold <= num_parts:
    raise ValueError(f"fold must be in 1..{num_parts}, got {fold}")


def test_part(fold: int, num_parts: int = 3) -> int:
  """The part tested in evaluation fold `fold` (1-based): part num_parts + 1 - fold."""
  _check_fold(fold, num_parts)
  return num_parts + 1 - fold


def train_parts(fold: int, num_parts: int = 3) -> tuple[int, ...]:
  """The parts trained on in evaluation fold `fold`, ascending."""
  test = test_part(fold, num_parts)
  return tuple(p for p in range(1, num_parts + 1) if p != test)


def part_of(parts: Mapping[int, Iterable[str]], subject: str) -> int:
  """The part number holding `subject`, or 0 if no part lists it."""
  for part, members in parts.items():
    if subject in members:
      return part
  return 0


def seeded_parts(subjects: Iterable[str], k: int, seed: int) -> Parts:
  """A seeded subject-exclusive split into k parts of near-equal size.

  The subjects are sorted and de-duplicated first, so the result depends only on the *set* of
  subjects, k and seed. Parts are numbered 1..k; each part's subjects are sorted; part sizes
  differ by at most one (the first parts are the larger ones).
  """
  subjects = sorted(set(subjects))
  if k < 2:
    raise ValueError(f"need k >= 2 folds, got {k}")
  if len(subjects) < k:
    raise ValueError(f"cannot split {len(subjects)} subject(s) into {k} non-empty parts")
  order = np.random.default_rng(seed).permutation(len(subjects))
  chunks = np.array_split(order, k)
  return {i + 1: tuple(sorted(subjects[j] for j in chunk)) for i, chunk in enumerate(chunks)}


def format_parts(parts: Mapping[int, Iterable[str]]) -> str:
  """One line per part, e.g. 'part1 (3): F001 F002 M004', for logs and reports."""
  lines = []
  for part in sorted(parts):
    members = list(parts[part])
    lines.append(f"part{part} ({len(members)}): " + " ".join(members))
  return "\n".join(lines)


def log_parts(name: str, parts: Mapping[int, Iterable[str]]) -> None:
  logging.info("%s subject parts (fold f tests part k+1-f):\n%s", name, format_parts(parts))
