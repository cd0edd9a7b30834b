"""Activity texts: what each dataset's subjects were asked to do, per task id.

  activities.activities("bp4d")          {'T1': 'Talk to the experimenter ... is happiness or
                                         amusement.', ...}
  activities.activity_text("bp4d", "T1")

The texts are facts of how a dataset was recorded, kept as data in
``input_pipeline/data/activities.json`` (`template` filled with each task's `task` and `emotion`).
Readers freeze them into every prepared record (`activity_text`) and into the metadata
(`activities`); training reads them from there, so an edit only reaches datasets prepared after it.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any

DEFAULT_PATH = pathlib.Path(__file__).parent / "data" / "activities.json"


def read_json(path: str, what: str) -> Any:
  """A JSON data file; a missing file or bad JSON is an error naming the path (and line)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} file not found: {path}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: invalid JSON in {what}: {e.msg}") from None


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
  data = read_json(path, "activity data")
  for key in ("template", "datasets"):
    if key not in data:
      raise KeyError(f"{path}: activity data lacks key {key!r}")
  out: dict[str, dict[str, str]] = {}
  if not isinstance(data["datasets"], dict):
    raise ValueError(f"{path}: 'datasets' must map dataset names to {{task: fields}}")
  for dataset, tasks in data["datasets"].items():
    out[dataset] = {}
    for task, fields in tasks.items():
      try:
        out[dataset][task] = data["template"].format(**fields)
      except (KeyError, IndexError, TypeError) as e:
        raise ValueError(
          f"{path}: datasets.{dataset}.{task} = {fields!r} does not fill template "
          f"{data['template']!r} ({type(e).__name__}: {e})"
        ) from None
  return {"raw": data, "datasets": out}


def data(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, str]]:
  """{dataset: {task: full text}} (the file is read once per path)."""
  return _load(str(path or DEFAULT_PATH))["datasets"]


def raw(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
  """The file as stored: {'template': str, 'datasets': {dataset: {task: {task, emotion}}}}."""
  return _load(str(path or DEFAULT_PATH))["raw"]


def datasets(path=None) -> list[str]:
  """Datasets with activity texts ('bp4d', 'bp4d_plus')."""
  return list(data(path))


def activities(dataset: str, path=None) -> dict[str, str]:
  """Task id -> full activity text, e.g. 'T1' -> 'Talk to ... joke. The target emotion is ...'."""
  d = data(path)
  if dataset not in d:
    raise KeyError(f"no activity texts for dataset {dataset!r}; known: {sorted(d)}")
  return dict(d[dataset])


def activity_text(dataset: str, task: str, path=None) -> str:
  acts = activities(dataset, path)
  if task not in acts:
    raise KeyError(f"no activity text for {dataset} task {task!r}; known: {sorted(acts)}")
  return acts[task]
