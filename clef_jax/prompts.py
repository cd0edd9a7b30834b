"""Label names, descriptions, templates and activity texts, kept as editable data.

The texts live in ``clef_jax/data/prompts.json``; a user may point ``CLEF_PROMPTS`` (or the
``path`` argument) at an edited copy. Everything here returns plain Python strings/lists, so the
input pipeline may use it without importing any model code.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Sequence

DEFAULT_PATH = pathlib.Path(__file__).parent / "data" / "prompts.json"

_REQUIRED_KEYS = (
  "expressions",
  "expression_descriptions",
  "expression_prototypes",
  "au_names",
  "au_descriptions",
  "name_templates",
  "au_negative_templates",
  "description_templates",
  "activities",
  "activity_template",
)


@functools.lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"prompt data file not found: {path}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: invalid JSON in prompt data: {e.msg}") from None
  missing = [k for k in _REQUIRED_KEYS if k not in data]
  if missing:
    raise KeyError(f"{path}: prompt data lacks key(s) {missing}")
  for name in data["expressions"]:
    if name not in data["expression_descriptions"]:
      raise KeyError(f"{path}: expression_descriptions has no entry for {name!r}")
  return data


def data(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
  """The whole prompt-data dict (read once per path)."""
  path = path or os.environ.get("CLEF_PROMPTS") or DEFAULT_PATH
  return _load(str(path))


def expressions(path=None) -> list[str]:
  """Canonical expression order: neutral, happiness, sadness, surprise, fear, disgust, anger, contempt."""
  return list(data(path)["expressions"])


def expression_index(name: str, path=None) -> int:
  names = expressions(path)
  if name not in names:
    raise KeyError(f"unknown expression {name!r}; known: {names}")
  return names.index(name)


def expression_description(name: str, path=None) -> str:
  return data(path)["expression_descriptions"][name]


def expression_prototype(name: str, path=None) -> list[int]:
  """EMFACS prototype AU numbers of an expression (e.g. happiness -> [6, 12])."""
  return list(data(path)["expression_prototypes"][name])


def au_name(au: int | str, path=None) -> str:
  names = data(path)["au_names"]
  if str(au) not in names:
    raise KeyError(f"no FACS name for AU{au}; known AUs: {sorted(names, key=int)}")
  return names[str(au)]


def au_description(au: int | str, path=None) -> str:
  descs = data(path)["au_descriptions"]
  if str(au) not in descs:
    raise KeyError(f"no description for AU{au}")
  return descs[str(au)]


def templates(kind: str, path=None) -> list[str]:
  """kind in {'name', 'au_negative', 'description'}."""
  key = f"{kind}_templates"
  d = data(path)
  if key not in d:
    raise KeyError(f"unknown template kind {kind!r}")
  return list(d[key])


def fill(templates_: Sequence[str], text: str) -> list[str]:
  return [t.format(text) for t in templates_]


def activities(dataset: str, path=None) -> dict[str, str]:
  """Task id -> full activity text, e.g. 'T1' -> 'Talk to ... joke. The target emotion is ...'."""
  d = data(path)
  if dataset not in d["activities"]:
    raise KeyError(f"no activity texts for dataset {dataset!r}; known: {sorted(d['activities'])}")
  tmpl = d["activity_template"]
  return {task: tmpl.format(**v) for task, v in d["activities"][dataset].items()}


def activity_text(dataset: str, task: str, path=None) -> str:
  acts = activities(dataset, path)
  if task not in acts:
    raise KeyError(f"no activity text for {dataset} task {task!r}; known: {sorted(acts)}")
  return acts[task]


def all_texts(path=None) -> list[str]:
  """Every text the method may feed to the text tower (for tokenizer coverage)."""
  d = data(path)
  out: list[str] = []
  tmpls = d["name_templates"] + d["au_negative_templates"] + d["description_templates"]
  words = [w for w in d.get("intensity_words", []) if w]
  names = list(d["expressions"]) + list(d["au_names"].values())
  descs = list(d["expression_descriptions"].values()) + list(d["au_descriptions"].values())
  for t in tmpls:
    out += [t.format(x) for x in names + descs]
    out += [t.format(f"{x} {w}") for x in d["au_names"].values() for w in words]
  for ds in d["activities"]:
    out += list(activities(ds, path).values())
  return out
