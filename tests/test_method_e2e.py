"""End to end on a tiny SynthFace: the CLEF method's whole path, docs/method.md stage by stage.

pretrain → finetune au / fer / fer on the seen classes (all from `clef:<pretrain>`) → the three
zero-shot protocols → linear probe, plus the `head=linear` and `au_head=prompt_pair` variants and
one run through the `main.py` command line. The runs share one data folder (SynthFace is
generated and prepared once, by conftest's `tiny_data_dir`) and conftest's persistent compilation
cache (later runs and the CLI run reuse the programs that earlier runs compiled). Each run's outputs are checked against the data read
independently from the prepared TFDS sources and against numpy recomputations.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from clef_jax import checkpoint as ckpt_lib
from clef_jax import models
from clef_jax import prompts
from clef_jax import train
from configs import common
from input_pipeline import sources
from scripts import run_folds
from tests.conftest import TINY_SYNTHFACE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
BP4D_AUS = [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24]
SEEN = ["happiness", "sadness", "surprise", "neutral"]
UNSEEN = ["fear", "disgust", "anger"]
# The prepared configs of the tiny SynthFace (its sizes name them; 'bp4d'/'raf' are the default's).
BP4D, RAF = (sources.synthface_config(p, **TINY_SYNTHFACE) for p in ("bp4d", "raf"))
TINY_TAG = BP4D.removeprefix("bp4d_")


# ------------------------------------------------------------------------------------------
# Fixtures: one data folder and one compilation cache for the module; each run once.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_data_dir):
  """A folder for this module's workdirs, with `data` -> the session's tiny SynthFace."""
  flags.FLAGS.mark_as_parsed()
  path = tmp_path_factory.mktemp("e2e")
  os.symlink(tiny_data_dir, path / "data")
  return path


def make_config(module: str, root, arg: str = "tiny", **overrides):
  """configs/<module>.py:<arg> on the shared data folder, STEPS steps, dotted `overrides`."""
  c = importlib.import_module(f"configs.{module}").get_config(arg)
  c.data.data_dir = str(root / "data")
  if c.mode != "zeroshot":
    c.total_steps = STEPS
    c.checkpoint_every_steps = STEPS
  return common.set_fields(c, overrides)


def run(module: str, root, name: str, arg: str = "tiny", **overrides):
  workdir = str(root / name)
  results = train.run(make_config(module, root, arg, **overrides), workdir)
  return workdir, results


@pytest.fixture(scope="module")
def pretrain(root):
  return run("pretrain", root, "pretrain")


@pytest.fixture(scope="module")
def finetune_au(root, pretrain):
  return run("finetune_au", root, "finetune_au", init=f"clef:{pretrain[0]}")


@pytest.fixture(scope="module")
def finetune_fer(root, pretrain):
  return run("finetune_fer", root, "finetune_fer", init=f"clef:{pretrain[0]}")


@pytest.fixture(scope="module")
def finetune_fer_seen(root, pretrain):
  return run(
    "finetune_fer",
    root,
    "finetune_fer_seen",
    init=f"clef:{pretrain[0]}",
    **{"finetune.classes": SEEN},
  )


def test_data_folder_is_prepared_once(root, pretrain):
  ddir = root / "data"
  assert (ddir / f"synthface_raw_{TINY_TAG}" / "synthface.json").is_file()
  for part in (BP4D, RAF):
    assert (ddir / "synthface" / part).is_dir()


# ------------------------------------------------------------------------------------------
# Helpers: what the prepared data says, independently of the trainer.
# ------------------------------------------------------------------------------------------


def _expressions(root, split: str, part: str = RAF) -> list[str]:
  src = sources.open_source(
    "synthface", split, str(root / "data"), config=part, decode_images=False
  )
  names = prompts.expressions()
  return [
    names[int(src[i]["expression"])] for i in range(len(src)) if int(src[i]["expression"]) >= 0
  ]


def _test_aus(root) -> np.ndarray:
  """AU labels [N, J] of fold 1's test part of the BP4D-like data, in source order."""
  src = sources.open_source("synthface", "part3", str(root / "data"), BP4D, decode_images=False)
  return np.stack([np.asarray(src[i]["au"], np.int64) for i in range(len(src))])


def _read(workdir: str, name: str):
  with open(os.path.join(workdir, name), encoding="utf-8") as f:
    return json.load(f)


def _check_run_files(workdir: str, mode: str, steps: int = STEPS) -> dict:
  config = _read(workdir, "config.json")
  assert config["mode"] == mode
  lines = [
    json.loads(l)
    for l in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")
    if l.strip()
  ]
  train_lines = [m for m in lines if "loss" in m]
  assert [m["step"] for m in train_lines] == list(range(1, steps + 1))
  assert all(np.isfinite(m["loss"]) for m in train_lines)
  results = _read(workdir, "results.json")
  assert results["step"] == steps
  assert os.path.isfile(os.path.join(workdir, "results.md"))
  with open(os.path.join(workdir, "curves.png"), "rb") as f:  # the losses and lr, plotted
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return results


def _in_unit_range(results: dict, prefix: str) -> None:
  vals = {
    k: v
    for k, v in results.items()
    if k.startswith(prefix) and isinstance(v, float) and not k.endswith("/eval_seconds")
  }
  assert vals, f"no {prefix}* metrics in {sorted(results)}"
  for k, v in vals.items():
    assert 0.0 <= v <= 1.0, (k, v)


def _check_fer(results: dict, prefix: str, classes: list[str], true: list[str], workdir: str):
  """FER metrics recomputed from the confusion matrix, whose row sums are the true counts."""
  cm = np.asarray(results[f"{prefix}fer/confusion_matrix"])
  assert cm.shape == (len(classes), len(classes))
  np.testing.assert_array_equal(cm.sum(1), [true.count(c) for c in classes])
  assert results[f"{prefix}fer/num_examples"] == len(true)
  np.testing.assert_allclose(results[f"{prefix}fer/accuracy"], np.trace(cm) / cm.sum())
  present = cm.sum(1) > 0
  np.testing.assert_allclose(
    results[f"{prefix}fer/mean_class_accuracy"], np.mean(np.diag(cm)[present] / cm.sum(1)[present])
  )
  for i, c in enumerate(classes):
    if present[i]:
      np.testing.assert_allclose(results[f"{prefix}fer/accuracy/{c}"], cm[i, i] / cm[i].sum())
  _in_unit_range(results, f"{prefix}fer/accuracy")
  png = os.path.join(workdir, f"{prefix.replace('/', '_')}confusion.png")
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _flat(tree) -> dict[str, np.ndarray]:
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_leaves_with_path(tree)
  }


# ------------------------------------------------------------------------------------------
# Stage 1.
# ------------------------------------------------------------------------------------------


def test_pretrain(root, pretrain):
  workdir, results = pretrain
  on_disk = _check_run_files(workdir, "pretrain")
  assert on_disk.keys() == results.keys()
  assert {f"au_probe/au_f1/AU{a}" for a in BP4D_AUS} | {"au_probe/au_f1/mean"} <= results.keys()
  _in_unit_range(results, "au_probe/au_f1/")
  np.testing.assert_allclose(
    results["au_probe/au_f1/mean"], np.mean([results[f"au_probe/au_f1/AU{a}"] for a in BP4D_AUS])
  )
  assert results["activity/chance"] == pytest.approx(1 / 8)
  _in_unit_range(results, "activity/")
  # The references are computed by the run on the same test frames: all-present by sklearn here.
  from sklearn.metrics import f1_score  # pylint: disable=g-import-not-at-top

  y = _test_aus(root)
  present = np.mean(
    [
      f1_score(y[y[:, j] >= 0, j], np.ones((y[:, j] >= 0).sum()), zero_division=0)
      for j in range(y.shape[1])
    ]
  )
  np.testing.assert_allclose(
    results["au_probe/reference/all_present/au_f1/mean"], present, rtol=1e-6
  )
  assert 0.0 <= results["au_probe/reference/raw_pixels/au_f1/mean"] <= 1.0
  m = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][0]
  assert {"loss", "loss_pi", "loss_pa"} <= m.keys()
  np.testing.assert_allclose(m["loss"], m["loss_pi"] + m["loss_pa"], rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Stage 2, and that `clef:` really loads the pretrained towers.
# ------------------------------------------------------------------------------------------


def test_finetune_au(finetune_au):
  workdir, results = finetune_au
  results = _check_run_files(workdir, "finetune")
  keys = {f"test/au_f1/AU{a}" for a in BP4D_AUS} | {"test/au_f1/mean"}
  assert keys <= results.keys()
  _in_unit_range(results, "test/au_f1/")
  np.testing.assert_allclose(
    results["test/au_f1/mean"], np.mean([results[f"test/au_f1/AU{a}"] for a in BP4D_AUS])
  )
  m = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][0]
  np.testing.assert_allclose(m["loss"], m["loss_in"] + m["loss_dn"], rtol=1e-5)


def test_finetune_fer(root, finetune_fer):
  workdir, _ = finetune_fer
  results = _check_run_files(workdir, "finetune")
  classes = sources.info("synthface", str(root / "data"), config=RAF)["classes"]
  _check_fer(results, "test/", classes, _expressions(root, "test"), workdir)


def test_finetune_fer_seen_classes(root, finetune_fer_seen):
  workdir, _ = finetune_fer_seen
  results = _check_run_files(workdir, "finetune")
  true = [e for e in _expressions(root, "test") if e in SEEN]
  _check_fer(results, "test/", SEEN, true, workdir)
  assert not any(f"test/fer/accuracy/{c}" in results for c in UNSEEN)


def test_clef_init_loads_the_pretrained_towers(root, pretrain, finetune_au):
  """The fine-tuned towers stay within a few Adam steps of the pretrained ones.

  With lr 1e-4 and 3 steps no parameter moves more than ~3e-4 (Adam's update is ≈ lr per
  step), while a fresh initialisation differs from the pretrained weights by far more.
  """
  _, pre = ckpt_lib.load_params(pretrain[0])
  _, fin = ckpt_lib.load_params(finetune_au[0])
  pre, fin = (
    _flat({k: pre[k] for k in ("visual", "text")}),
    _flat({k: fin[k] for k in ("visual", "text")}),
  )
  assert pre.keys() == fin.keys()
  drift = max(float(np.abs(pre[k] - fin[k]).max()) for k in pre)
  assert drift < 3 * STEPS * 1e-4
  config = make_config("finetune_au", root)
  model = models.build(config.model)
  size = config.model.image_size
  fresh = model.init(
    jax.random.key(123),
    np.zeros((1, size, size, 3), np.float32),
    np.zeros((1, config.model.context_length), np.int32),
  )["params"]
  fresh = _flat({k: fresh[k] for k in ("visual", "text")})
  assert max(float(np.abs(pre[k] - fresh[k]).max()) for k in pre) > 10 * drift


# ------------------------------------------------------------------------------------------
# Zero-shot protocols.
# ------------------------------------------------------------------------------------------


def _zeroshot(root, protocol: str, init_workdir: str, name: str):
  workdir, results = run(
    "zeroshot", root, name, f"tiny,protocol={protocol}", init=f"clef:{init_workdir}"
  )
  assert _read(workdir, "results.json") == json.loads(json.dumps(results))
  assert _read(workdir, "config.json")["evals"]["zeroshot"]["protocol"] == protocol
  assert results["zeroshot/protocol"] == protocol
  return workdir, results


@pytest.mark.parametrize("protocol", ["prompts", "au_to_fer"])
def test_zeroshot_over_all_classes(root, pretrain, finetune_au, protocol):
  init = {"prompts": pretrain, "au_to_fer": finetune_au}[protocol][0]
  workdir, results = _zeroshot(root, protocol, init, f"zeroshot_{protocol}")
  classes = sources.info("synthface", str(root / "data"), config=RAF)["classes"]
  _check_fer(results, "zeroshot/", classes, _expressions(root, "test"), workdir)
  assert results["zeroshot/chance"] == pytest.approx(1 / len(classes))


def test_zeroshot_unseen_expressions(root, finetune_fer_seen):
  workdir, results = _zeroshot(root, "unseen_expressions", finetune_fer_seen[0], "zeroshot_unseen")
  assert results["zeroshot/split"] == f"seen={SEEN} unseen={UNSEEN}"
  n_unseen = sum(e in UNSEEN for e in _expressions(root, "test"))
  assert results["zeroshot/num_examples"] == n_unseen > 0
  assert results["zeroshot/chance_unseen_only"] == pytest.approx(1 / len(UNSEEN))
  for k in ("unseen_accuracy_all_classes", "unseen_accuracy_unseen_only"):
    v = results[f"zeroshot/{k}"]
    assert 0 <= v <= 1 and float(v * n_unseen).is_integer(), (k, v)


# ------------------------------------------------------------------------------------------
# Linear probe and the fine-tuning variants.
# ------------------------------------------------------------------------------------------


def test_linear_probe_keeps_the_pretrained_towers(root, pretrain):
  workdir, results = run(
    "linear_probe", root, "linear_probe", "tiny,task=au", init=f"clef:{pretrain[0]}"
  )
  results = _check_run_files(workdir, "linear_probe")
  _in_unit_range(results, "test/au_f1/")
  assert "test/au_f1/AU12" in results
  _, pre = ckpt_lib.load_params(pretrain[0])
  _, probe = ckpt_lib.load_params(workdir)
  pre_f, probe_f = _flat(pre), _flat(probe)
  for k, v in pre_f.items():
    if not k.startswith("heads"):
      np.testing.assert_array_equal(probe_f[k], v, err_msg=k)
  head = probe["heads"]["linear"]
  assert head["kernel"].shape == (pre["visual"]["proj"].shape[-1], len(BP4D_AUS))
  # The head trained: at least one Adam step moved it away from its initialisation.
  assert float(np.abs(head["bias"]).max()) > 0


@pytest.mark.parametrize("variant", ["head=linear", "au_head=prompt_pair"])
def test_finetune_variants(root, pretrain, variant):
  key, value = variant.split("=")
  workdir, results = run(
    "finetune_au",
    root,
    f"finetune_au_{value}",
    init=f"clef:{pretrain[0]}",
    **{f"finetune.{key}": value},
  )
  results = _check_run_files(workdir, "finetune")
  assert _read(workdir, "config.json")["finetune"][key] == value
  _in_unit_range(results, "test/au_f1/")
  assert {f"test/au_f1/AU{a}" for a in BP4D_AUS} <= results.keys()
  _, params = ckpt_lib.load_params(workdir)
  assert ("linear" in params["heads"]) == (key == "head")


# ------------------------------------------------------------------------------------------
# scripts/run_folds.py: the per-fold and averaged table, and the command line.
# ------------------------------------------------------------------------------------------


def _write_results(workdir, fold, results):
  d = os.path.join(workdir, f"fold{fold}")
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f)


def test_run_folds_table(tmp_path):
  rng = np.random.default_rng(0)
  vals = rng.uniform(size=(3, 2))
  for k in (1, 2, 3):
    _write_results(
      str(tmp_path),
      k,
      {
        "test/au_f1/mean": vals[k - 1, 0],
        "test/au_f1/AU12": vals[k - 1, 1],
        "step": 3,
        "test/fer/confusion_matrix": [[1, 0], [0, 1]],
        "zeroshot/protocol": "prompts",
        "only_in_two": float(k) if k < 3 else "n/a",
        "flag": True,
      },
    )
  out = run_folds.write_tables(str(tmp_path), [1, 2, 3], "configs/x.py:tiny")
  for j, name in enumerate(("test/au_f1/mean", "test/au_f1/AU12")):
    np.testing.assert_allclose(out["mean"][name], vals[:, j].mean())
    np.testing.assert_allclose(out["std"][name], vals[:, j].std(ddof=0))
  assert out["mean"]["step"] == 3 and out["std"]["step"] == 0
  assert out["mean"]["only_in_two"] == 1.5 and out["n"]["only_in_two"] == 2
  assert not {"test/fer/confusion_matrix", "zeroshot/protocol", "flag"} & out["mean"].keys()
  assert _read(str(tmp_path), "folds.json") == json.loads(json.dumps(out))
  md = open(tmp_path / "folds.md", encoding="utf-8").read().splitlines()
  row = next(l for l in md if l.startswith("| test/au_f1/AU12 |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1:4] == [f"{v:.4f}" for v in vals[:, 1]]
  assert cells[4] == f"{vals[:, 1].mean():.4f} ± {vals[:, 1].std():.4f}"
  assert next(l for l in md if l.startswith("| only_in_two |")).split("|")[4].strip() == "—"


def test_run_folds_errors(tmp_path):
  for bad in ("", "1,1", "0,1", "a"):
    with pytest.raises(ValueError, match="--folds"):
      run_folds.parse_folds(bad)
  with pytest.raises(ValueError, match="--config.fold"):
    run_folds.fold_command("c.py", str(tmp_path), 1, ["--config.fold=2"])
  _write_results(str(tmp_path), 1, {"a": 1.0})
  with pytest.raises(FileNotFoundError, match="fold2.*results.json"):
    run_folds.write_tables(str(tmp_path), [1, 2])
  (tmp_path / "fold2").mkdir()
  (tmp_path / "fold2" / "results.json").write_text("{not json")
  with pytest.raises(ValueError, match="fold2.*not valid JSON"):
    run_folds.write_tables(str(tmp_path), [1, 2])


def test_zeroshot_mode_on_the_pretrain_config(root, pretrain):
  """The promised usage, on the command line: `--config.mode=zeroshot` with the pretrain config
  evaluates `init` with that config's zero-shot evaluators (activity texts on its BP4D-like test
  frames, expression-name prompts on the RAF-like test set) and trains nothing. (:tiny and the
  data folder keep it small; the old code died with AttributeError: 'zeroshot'.)"""
  workdir = str(root / "zeroshot_from_pretrain_config")
  cmd = [
    sys.executable,
    "main.py",
    "--config=configs/pretrain.py:tiny",
    "--config.mode=zeroshot",
    f"--config.init=clef:{pretrain[0]}",
    f"--workdir={workdir}",
    f"--config.data.data_dir={root / 'data'}",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _read(workdir, "results.json")
  assert results["step"] == 0
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert results["activity/chance"] == pytest.approx(1 / 8)
  _in_unit_range(results, "activity/")
  classes = sources.info("synthface", str(root / "data"), config=RAF)["classes"]
  _check_fer(results, "expressions/", classes, _expressions(root, "test"), workdir)
  assert not any(k.startswith("au_probe/") for k in results)  # needs training labels: not zero-shot


def test_run_folds_cli_runs_main_per_fold(root, pretrain):
  """Two folds through scripts/run_folds.py -> main.py subprocesses (the command-line test).

  Zero-shot is the cheapest mode that runs main.py end to end; `zeroshot.texts=both` also
  covers the name+description prompt ensemble.
  """
  workdir = str(root / "folds")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "run_folds.py"),
    "--config=configs/zeroshot.py:tiny,protocol=prompts",
    f"--workdir={workdir}",
    "--folds=1,2",
    "--",
    f"--config.init=clef:{pretrain[0]}",
    f"--config.data.data_dir={root / 'data'}",
    "--config.evals.zeroshot.texts=both",
  ]
  proc = subprocess.run(
    cmd,
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  classes = sources.info("synthface", str(root / "data"), config=RAF)["classes"]
  per_fold = []
  for k in (1, 2):
    fold_dir = os.path.join(workdir, f"fold{k}")
    assert _read(fold_dir, "config.json")["fold"] == k
    results = _read(fold_dir, "results.json")
    assert results["zeroshot/texts"] == "both"
    _check_fer(results, "zeroshot/", classes, _expressions(root, "test"), fold_dir)
    per_fold.append(results)
  table = _read(workdir, "folds.json")
  for name in ("zeroshot/fer/accuracy", "zeroshot/fer/mean_class_accuracy"):
    np.testing.assert_allclose(table["mean"][name], np.mean([r[name] for r in per_fold]))
  assert os.path.isfile(os.path.join(workdir, "folds.md"))
