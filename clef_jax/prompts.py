"""Label texts, kept as editable data: names, descriptions, templates, intensity words.

The texts live in ``clef_jax/data/prompts.json``; a user may point ``CLEF_PROMPTS`` (or the
``path`` argument) at an edited copy. The file holds only texts, keyed by label: the label schema
(the expression order = the ids stored in prepared datasets, AU numbers) is
``input_pipeline.schema``, and the activity texts are facts of each dataset
(``input_pipeline/data/activities.json``, frozen into prepared records). ``expressions``,
``expression_index``, ``activities`` and ``activity_text`` are re-exported from there, so callers
need one import. A prompts copy that still carries ``expressions``, ``activities``,
``activity_template`` or ``expression_prototypes`` is accepted only where they equal the
pipeline's (editing them here would silently change nothing, or relabel data).
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Sequence

from input_pipeline import activities as activities_lib
from input_pipeline import schema

DEFAULT_PATH = pathlib.Path(__file__).parent / "data" / "prompts.json"

_REQUIRED_KEYS = (
  "expression_descriptions",
  "au_names",
  "au_descriptions",
  "name_templates",
  "au_negative_templates",
  "description_templates",
)
# Keys older prompt files carried that now live in input_pipeline: {key: where it lives now}.
_MOVED_KEYS = {
  "expressions": "input_pipeline/schema.py (EXPRESSIONS)",
  "activities": "input_pipeline/data/activities.json",
  "activity_template": "input_pipeline/data/activities.json",
  "expression_prototypes": "input_pipeline/synthface/population.py (EXPRESSION_PROTOTYPES)",
}


def _moved_value(key: str) -> Any:
  """The pipeline's value of a moved key, in the shape older prompt files stored it."""
  if key == "expressions":
    return schema.expressions()
  if key == "expression_prototypes":
    from input_pipeline.synthface import population  # pylint: disable=import-outside-toplevel

    return {k: list(v) for k, v in population.EXPRESSION_PROTOTYPES.items()}
  raw = activities_lib.raw()
  return raw["template"] if key == "activity_template" else raw["datasets"]


def _short(value: Any, limit: int = 240) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 4] + " ..."


def _check_moved(path: str, data: dict[str, Any]) -> None:
  for key, home in _MOVED_KEYS.items():
    if key not in data:
      continue
    have, want = data[key], _moved_value(key)
    if key == "expression_prototypes" and isinstance(have, dict):
      have = {k: list(v) for k, v in have.items()}
    if have != want:
      raise ValueError(
        f"{path}: key {key!r} = {_short(have)} differs from the pipeline's {_short(want)}; it "
        f"is no longer read from the prompts file (it lives in {home}, and prepared datasets "
        f"store it). Remove the key from {path}"
      )


@functools.lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
  data = activities_lib.read_json(path, "prompt data")
  missing = [k for k in _REQUIRED_KEYS if k not in data]
  if missing:
    raise KeyError(f"{path}: prompt data lacks key(s) {missing}")
  _check_moved(path, data)
  for name in schema.EXPRESSIONS:
    if name not in data["expression_descriptions"]:
      raise KeyError(f"{path}: expression_descriptions has no entry for {name!r}")
  return data


def data(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
  """The whole prompt-data dict (read once per path)."""
  path = path or os.environ.get("CLEF_PROMPTS") or DEFAULT_PATH
  return _load(str(path))


# The label schema (input_pipeline.schema): neutral, happiness, sadness, surprise, fear, disgust,
# anger, contempt; expression_index('happiness') == 1.
expressions = schema.expressions
expression_index = schema.expression_index


def expression_description(name: str, path=None) -> str:
  return data(path)["expression_descriptions"][name]


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


# Templates of a kind that older prompt files may lack, with the value used then.
_OPTIONAL_TEMPLATES = {"free_text": ["{}."]}


def templates(kind: str, path=None) -> list[str]:
  """kind in {'name', 'au_negative', 'description', 'free_text'} (free_text: a user's prompt
  at prediction time, e.g. 'a person squinting')."""
  key = f"{kind}_templates"
  d = data(path)
  if key not in d and kind in _OPTIONAL_TEMPLATES:
    return list(_OPTIONAL_TEMPLATES[kind])
  if key not in d:
    raise KeyError(f"unknown template kind {kind!r}")
  return list(d[key])


def fill(templates_: Sequence[str], text: str) -> list[str]:
  return [t.format(text) for t in templates_]


# Activity texts (input_pipeline.activities): activities('bp4d') -> {'T1': 'Talk to ...', ...}.
activities = activities_lib.activities
activity_text = activities_lib.activity_text


def all_texts(path=None) -> list[str]:
  """Every text the method may feed to the text tower (for tokenizer coverage)."""
  d = data(path)
  out: list[str] = []
  tmpls = d["name_templates"] + d["au_negative_templates"] + d["description_templates"]
  words = [w for w in d.get("intensity_words", []) if w]
  names = schema.expressions() + list(d["au_names"].values())
  descs = list(d["expression_descriptions"].values()) + list(d["au_descriptions"].values())
  for t in tmpls:
    out += [t.format(x) for x in names + descs]
    out += [t.format(f"{x} {w}") for x in d["au_names"].values() for w in words]
  for ds in activities_lib.datasets():
    out += list(activities_lib.activities(ds).values())
  return out
