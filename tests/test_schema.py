"""The label schema belongs to the data: input_pipeline.schema, checked when a dataset is opened.

A prepared dataset stores expression *ids*; these tests prepare a tiny manifest dataset, then
reorder the stored expression list (or the schema itself) and expect opening it to fail loudly,
naming both orders and the dataset folder. The pipeline must never import clef_jax.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from clef_jax import prompts
from input_pipeline import activities
from input_pipeline import schema
from input_pipeline import sources
from input_pipeline.readers import affectnet
from input_pipeline.readers import bp4d
from input_pipeline.readers import ferplus
from input_pipeline.readers import raf_db
from input_pipeline.synthface import population

REPO = pathlib.Path(__file__).resolve().parent.parent
CANONICAL = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]
CONFIG = "default_16px"


@pytest.fixture(scope="module")
def manifest_data(tmp_path_factory):
  """(data_dir, dataset folder) of a 4-image manifest dataset prepared at 16 px."""
  tmp = tmp_path_factory.mktemp("schema")
  root = tmp / "mine"
  root.mkdir()
  rows = ["path,expression,split,au_12"]
  for i, (expr, split) in enumerate(
    [("happiness", "train"), ("fear", "train"), ("neutral", "test"), ("anger", "test")]
  ):
    Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    rows.append(f"{i}.png,{expr},{split},{i % 2}")
  (root / "manifest.csv").write_text("\n".join(rows) + "\n")
  data_dir = tmp / "tfds"
  sources.prepare("manifest", root, data_dir, image_size=16)
  return data_dir, sources.dataset_dir("manifest", data_dir, CONFIG)


def _metadata_file(folder: str) -> pathlib.Path:
  path = pathlib.Path(folder) / "metadata.json"
  assert path.is_file(), sorted(os.listdir(folder))
  return path


def test_schema_order_and_index():
  assert schema.expressions() == CANONICAL and list(schema.EXPRESSIONS) == CANONICAL
  assert schema.NUM_EXPRESSIONS == 8
  assert [schema.expression_index(e) for e in CANONICAL] == list(range(8))
  with pytest.raises(KeyError, match=r"unknown expression 'joy'.*neutral"):
    schema.expression_index("joy")
  # clef_jax.prompts re-exports the schema rather than holding its own order.
  assert prompts.expressions() == CANONICAL and prompts.expression_index("contempt") == 7


def test_readers_map_their_label_files_by_hand():
  # The datasets' own label orders (their documentation), mapped to canonical ids by hand.
  assert raf_db.TO_CANONICAL == (3, 4, 5, 1, 2, 6, 0)
  assert ferplus.TO_CANONICAL == (0, 1, 3, 2, 6, 5, 4, 7)
  assert affectnet.TO_CANONICAL == tuple(range(8))


def test_prepared_dataset_stores_and_passes_the_schema(manifest_data):
  data_dir, folder = manifest_data
  meta = sources.info("manifest", data_dir, CONFIG)
  assert meta["expressions"] == CANONICAL
  assert meta["schema_version"] == schema.SCHEMA_VERSION
  assert meta["aus"] == [12] and meta["path"] == folder
  src = sources.open_source("manifest", "train", data_dir, CONFIG)
  assert [int(x["expression"]) for x in src] == [1, 4]


def test_reordered_stored_expressions_fail_loudly(manifest_data, tmp_path):
  data_dir, folder = manifest_data
  # A copy of the prepared dataset whose stored order was swapped (as if prepared from an edited
  # prompts file that reordered `expressions`, which the old code let relabel every example).
  copy_dir = tmp_path / "tfds"
  copy = pathlib.Path(sources.dataset_dir("manifest", copy_dir, CONFIG))
  copy.parent.mkdir(parents=True)
  shutil.copytree(folder, copy)
  path = _metadata_file(str(copy))
  meta = json.loads(path.read_text())
  swapped = ["happiness", "neutral"] + CANONICAL[2:]
  meta["expressions"] = swapped
  path.write_text(json.dumps(meta))
  for open_it in (
    lambda: sources.info("manifest", copy_dir, CONFIG),
    lambda: sources.open_source("manifest", "train", copy_dir, CONFIG),
  ):
    with pytest.raises(ValueError) as e:
      open_it()
    msg = str(e.value)
    assert str(copy) in msg and str(swapped) in msg and str(CANONICAL) in msg


def test_reordered_schema_fails_on_a_dataset_prepared_before(manifest_data, monkeypatch):
  data_dir, folder = manifest_data
  reordered = tuple(CANONICAL[::-1])
  monkeypatch.setattr(schema, "EXPRESSIONS", reordered)
  with pytest.raises(ValueError) as e:
    sources.info("manifest", data_dir, CONFIG)
  msg = str(e.value)
  assert folder in msg and str(CANONICAL) in msg and str(list(reordered)) in msg


def test_check_version_and_aus():
  good = {"expressions": CANONICAL, "schema_version": schema.SCHEMA_VERSION, "aus": [1, 12]}
  schema.check(good, "/d")
  schema.check(good, "/d", aus=(1, 12))
  schema.check({"expressions": CANONICAL}, "/d")  # prepared before the version was stored
  with pytest.raises(ValueError, match=r"^/d: .*AUs \[1, 12\].*reader defines \[12, 1\]"):
    schema.check(good, "/d", aus=(12, 1))
  with pytest.raises(ValueError, match=r"^/d: .*repeats"):
    schema.check({**good, "aus": [12, 12]}, "/d")
  with pytest.raises(ValueError, match=r"^/d: .*non-FACS"):
    schema.check({**good, "aus": ["AU12"]}, "/d")
  with pytest.raises(ValueError, match=r"^/d: .*version 99"):
    schema.check({**good, "schema_version": 99}, "/d")
  with pytest.raises(ValueError, match=r"^/d: metadata has no 'expressions'"):
    schema.check({"aus": []}, "/d")


def test_activity_texts_are_pipeline_data():
  acts = activities.activities("bp4d")
  assert sorted(acts, key=lambda t: int(t[1:])) == [f"T{i}" for i in range(1, 9)]
  assert acts["T2"] == "Watch and discuss a documentary. The target emotion is sadness."
  assert activities.datasets() == ["bp4d", "bp4d_plus"]
  assert bp4d.tasks() == [f"T{i}" for i in range(1, 9)]
  assert prompts.activities("bp4d_plus") == activities.activities("bp4d_plus")
  with pytest.raises(KeyError, match="no activity text for bp4d task 'T9'"):
    activities.activity_text("bp4d", "T9")


def test_activity_file_errors_name_the_file(tmp_path):
  bad = tmp_path / "a.json"
  bad.write_text('{"template": "{task} / {emotion}", "datasets": {"x": {"T1": {"task": "t"}}}}')
  with pytest.raises(ValueError, match=rf"{bad}: datasets.x.T1 .*does not fill"):
    activities.activities("x", bad)
  bad.write_text("{")
  with pytest.raises(ValueError, match=rf"{bad}:1: invalid JSON"):
    activities.activities("x", bad)


def test_prompts_file_holds_only_texts(tmp_path):
  with open(prompts.DEFAULT_PATH, encoding="utf-8") as f:
    d = json.load(f)
  for key in ("expressions", "activities", "activity_template", "expression_prototypes"):
    assert key not in d
  assert set(d["expression_descriptions"]) == set(CANONICAL)
  # An older copy that still lists the moved keys is fine while they equal the pipeline's...
  old = dict(d, expressions=CANONICAL, activity_template="{task}. The target emotion is {emotion}.")
  old["expression_prototypes"] = {k: list(v) for k, v in population.EXPRESSION_PROTOTYPES.items()}
  path = tmp_path / "prompts.json"
  path.write_text(json.dumps(old))
  assert prompts.data(path)["au_names"] == d["au_names"]
  # ...and an error naming the file and key once edited (editing it there would relabel data).
  old["expressions"] = CANONICAL[::-1]
  path2 = tmp_path / "prompts2.json"
  path2.write_text(json.dumps(old))
  with pytest.raises(ValueError, match=rf"{path2}: key 'expressions'.*input_pipeline/schema.py"):
    prompts.data(path2)


def test_synthface_prototypes_cover_the_schema():
  assert list(population.EXPRESSION_PROTOTYPES) == CANONICAL
  assert population.expression_prototype("happiness") == [6, 12]
  with pytest.raises(KeyError, match="no prototype for expression 'joy'"):
    population.expression_prototype("joy")


def test_input_pipeline_never_imports_clef_jax():
  code = (
    "import importlib, pkgutil, sys\n"
    "import input_pipeline\n"
    "names = [m.name for m in pkgutil.walk_packages(input_pipeline.__path__, 'input_pipeline.')]\n"
    "for n in names:\n"
    "  importlib.import_module(n)\n"
    "bad = sorted(m for m in sys.modules if m == 'clef_jax' or m.startswith('clef_jax.'))\n"
    "assert not bad, bad\n"
    "print(len(names))\n"
  )
  env = dict(os.environ, PYTHONPATH=str(REPO))
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  # Every module was walked: the readers, builders, synthface, schema, ...
  assert int(out.stdout.split()[-1]) >= 20


def test_free_text_templates_and_an_older_prompts_copy(tmp_path):
  assert prompts.templates("free_text") == ["{}.", "a photo of {}.", "a close-up photo of {}."]
  with open(prompts.DEFAULT_PATH, encoding="utf-8") as f:
    d = json.load(f)
  older = {k: v for k, v in d.items() if k not in ("free_text_templates", "intensity_levels")}
  path = tmp_path / "prompts.json"
  path.write_text(json.dumps(older))
  # A copy from before free-text prompts: the prompt as given, no template ensemble.
  assert prompts.templates("free_text", path) == ["{}."]
  with pytest.raises(KeyError, match="unknown template kind 'nope'"):
    prompts.templates("nope", path)
