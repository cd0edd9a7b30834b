"""benchmarks/reproduce.py: its probes against sklearn/numpy, its head fitter, and a --quick run."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import reproduce  # pylint: disable=g-import-not-at-top,wrong-import-position
from clef_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from clef_jax import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def _settings(**kw):
  args = dict(
    quick=True,
    pretrain_steps=0,
    head_steps="",
    folds="",
    finetune_steps=0,
    e2e_lrs="",
    seed=0,
    head_lr=3e-3,
    init="",
    tokenizer="",
    config_arg="",
  )
  args.update(kw)
  return reproduce.settings(type("Args", (), args)())


def test_mean_std_and_format():
  assert reproduce.fmt([0.5, 0.7]) == "60.0 ± 10.0"  # population std, in %
  assert reproduce.fmt([0.25, None]) == "25.0 ± 0.0"  # missing folds are skipped
  assert reproduce.fmt([]) == "–"
  m, s = reproduce.mean_std([0.1, 0.2, 0.6])
  assert m == pytest.approx(0.3) and s == pytest.approx(np.std([0.1, 0.2, 0.6]))


def _embeddings(identity_strength: float, seed: int = 0):
  """5 subjects × 8 tasks × 6 frames; z = strength · onehot(subject) + noise."""
  rng = np.random.default_rng(seed)
  subj, act = np.meshgrid(np.arange(5), np.arange(8), indexing="ij")
  subj = np.repeat(subj.ravel(), 6)
  act = np.repeat(act.ravel(), 6)
  z = rng.normal(size=(len(subj), 16)).astype(np.float32)
  z[:, :5] += identity_strength * np.eye(5, dtype=np.float32)[subj]
  return {"au_train/z": z, "au_train/subject_id": subj, "au_train/activity_id": act}


def test_identity_probe_trains_on_odd_tasks_and_tests_on_even_ones():
  s = _settings()
  e = _embeddings(4.0)
  acc = reproduce.identity_probe(e, s)
  # Independent reference: sklearn on the same split (tasks T1,T3,.. = ids 0,2,.. train).
  tr = e["au_train/activity_id"] % 2 == 0
  clf = LogisticRegression(max_iter=2000, random_state=0).fit(
    e["au_train/z"][tr], e["au_train/subject_id"][tr]
  )
  want = np.mean(clf.predict(e["au_train/z"][~tr]) == e["au_train/subject_id"][~tr])
  assert acc == pytest.approx(want) and acc > 0.95
  # Without identity in the embedding the probe is near chance (0.2).
  assert reproduce.identity_probe(_embeddings(0.0), s) < 0.4


@pytest.fixture(scope="module")
def tiny_clip():
  config = reproduce.au_config(_settings(), "/nonexistent", 1)
  mc = config.model
  model = models.build(mc)
  params = model.init(
    jax.random.key(0),
    jnp.zeros((1, mc.image_size, mc.image_size, 3)),
    jnp.zeros((1, mc.context_length), jnp.int32),
  )["params"]
  tok = tok_lib.get("embedded", context_length=mc.context_length)
  return config, jax.tree.map(np.asarray, params), tok


@pytest.mark.parametrize("head", ["I", "I+N"])
def test_head_fitter_learns_a_linear_au_rule(tiny_clip, head):
  """AU j occurs when <z, w_j> > 0: a frozen-feature head must recover it (vs sklearn)."""
  config, params, tok = tiny_clip
  s = {**_settings(), "head_steps": [100, 300], "head_batch": 64, "head_lr": 1e-2}
  for k, v in reproduce.HEADS[head].items():
    config.finetune[k] = v
  rng = np.random.default_rng(1)
  d = config.model.embed_dim
  z = rng.normal(size=(600, d)).astype(np.float32)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  w = rng.normal(size=(d, 3)).astype(np.float32)
  y = (z @ w > 0).astype(np.int32)
  y[::7, 0] = -1  # unknown labels are masked, not negatives
  fitter = reproduce.HeadFitter(s, config, tok, [1, 2, 4])
  fitted, snaps = fitter.fit(
    params, z[:400], {"au": y[:400]}, 0, 300, np.ones(3, np.float32), snapshots=(100, 300)
  )
  # Constant lr: the 300-step snapshot is the fit's end, and an n-step fit is its n-step prefix.
  jax.tree.map(np.testing.assert_array_equal, snaps[300], fitted)
  short, _ = fitter.fit(params, z[:400], {"au": y[:400]}, 0, 100, np.ones(3, np.float32))
  jax.tree.map(np.testing.assert_array_equal, snaps[100], short)
  pred = (fitter.predict(fitted, z[400:]) >= 0).astype(np.int32)
  for j in range(3):
    known = y[400:, j] >= 0
    ref = LogisticRegression(max_iter=2000).fit(
      z[:400][y[:400, j] >= 0], y[:400, j][y[:400, j] >= 0]
    )
    f1_ref = f1_score(y[400:, j][known], ref.predict(z[400:][known]))
    f1 = f1_score(y[400:, j][known], pred[known, j])
    assert f1 > 0.8 and f1 > f1_ref - 0.1, (head, j, f1, f1_ref)  # chance ≈ 0.5


class _StepCountFitter:
  """A stand-in head whose 'params' are its step count: the AU logits of row i are +1 for the
  AUs of `truth[i]` after exactly `best` steps, and -1 everywhere otherwise (so only the
  `best`-step head scores above the all-absent prediction). Records every fit."""

  def __init__(self, grid, best, truth):
    self.s, self.best, self.truth, self.calls = {"head_steps": grid}, best, truth, []

  def fit(self, params, z, labels, seed, steps, pos_weight=None, snapshots=()):
    self.calls.append((z[:, 0].copy(), steps, tuple(snapshots)))
    return steps, {n: n for n in snapshots}

  def predict(self, steps, z):
    rows = z[:, 0].astype(int)
    return (
      np.where(self.truth[rows] > 0, 1.0, -1.0)
      if steps == self.best
      else -np.ones((len(z), self.truth.shape[1]))
    )


def test_fit_selected_chooses_steps_on_held_out_subjects_then_refits_on_all():
  rng = np.random.default_rng(0)
  groups = np.repeat(np.arange(8), 5)  # 8 subjects × 5 frames
  y = rng.integers(0, 2, size=(40, 3)).astype(np.int8)
  z = np.arange(40, dtype=np.float32)[:, None]  # z[:, 0] = the row's index
  fitter = _StepCountFitter([5, 10, 20], best=10, truth=y)
  fitted, steps, val = reproduce.fit_selected(fitter, None, z, {"au": y}, groups, seed=3)
  assert (fitted, steps) == (10, 10)
  (sel_rows, sel_steps, snaps), (all_rows, all_steps, _) = fitter.calls
  held = reproduce.linear_probe_au.validation_subjects(groups, reproduce.VAL_FRACTION, 3)
  assert held.sum() == 10 and not set(groups[held]) & set(groups[sel_rows.astype(int)])
  assert (sel_steps, snaps) == (20, (5, 10, 20))  # one run scores every grid point
  np.testing.assert_array_equal(all_rows, np.arange(40))  # refitted on every training row
  assert all_steps == 10
  ref = f1_score(y[held].ravel(), y[held].ravel())  # the chosen head is right on held-out rows
  assert val == pytest.approx(ref) == 1.0
  # A given step count skips the selection: one fit on all rows.
  fitter.calls.clear()
  assert reproduce.fit_selected(fitter, None, z, {"au": y}, groups, 3, steps=5)[1:] == (5, None)
  assert len(fitter.calls) == 1 and fitter.calls[0][1] == 5


def test_fer_probe_matches_sklearn_grid_search_on_held_out_images():
  from sklearn.model_selection import GridSearchCV, PredefinedSplit
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  rng = np.random.default_rng(5)
  n, d, k = 150, 60, 3
  w = rng.normal(size=(d, k)) * (np.arange(d) < 5)[:, None]
  x, xte = rng.normal(size=(n, d)), rng.normal(size=(90, d))
  y = (x @ w + rng.normal(scale=1.0, size=(n, k))).argmax(-1)
  pred, c, val = reproduce.fer_probe(x, y, xte, seed=1)
  held = reproduce.linear_probe_au.validation_subjects(np.arange(n), reproduce.VAL_FRACTION, 1)
  search = GridSearchCV(
    make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=1)),
    {"logisticregression__C": sorted(reproduce.linear_probe_au.CS)},
    scoring="accuracy",
    cv=PredefinedSplit(np.where(held, 0, -1)),
    refit=True,
  ).fit(x, y)
  assert c == search.best_params_["logisticregression__C"]
  assert val == pytest.approx(search.best_score_)
  np.testing.assert_array_equal(pred, search.predict(xte))
  assert np.mean(pred == (xte @ w).argmax(-1)) > 0.6  # chance 1/3


def test_quick_run_writes_every_table_and_figure(tmp_path, tiny_data_dir):
  w, md, fig = tmp_path / "w", tmp_path / "results.md", tmp_path / "fig"
  # Three of the five rows keep CI short; the other two differ only in pretraining overrides.
  rows = ("random", "instance", "clef_pa_pi")
  argv = [
    "--quick",
    f"--workdir={w}",
    f"--data_dir={tiny_data_dir}",
    f"--results={md}",
    f"--figures={fig}",
    "--cache_dir=",
    f"--rows={','.join(rows)}",
    "--head_steps=4,8",
  ]
  result = reproduce.main(argv)
  s = result["settings"]
  assert s["folds"] == [1, 2]
  keys = [
    "identity_acc",
    "zeroshot/au_to_fer",
    "zeroshot/unseen_all_classes",
    "zeroshot/unseen_only",
  ] + [
    f"{p}{m}/{h}"
    for h in reproduce.HEADS
    for p, m in (("", "au_f1"), ("scarce_", "au_f1"), ("", "fer_acc"))
  ]
  assert list(result["cells"]) == list(rows)
  for row in rows:
    for fold in ("1", "2"):
      cell = result["cells"][row][fold]
      for k in keys:
        assert 0.0 <= cell[k] <= 1.0, (row, fold, k, cell[k])
      # Text-head schedules come from the --head_steps grid, chosen on fold 1 and reused.
      assert set(cell["schedule"]) == {
        f"{t}/{h}" for t in ("au", "fer") for h in reproduce.HEADS if h != "I"
      }
      assert set(cell["schedule"].values()) <= {4, 8}
      assert cell["schedule"] == result["cells"][row]["1"]["schedule"]
      assert ("val/au_f1/I+N" in cell) == (fold == "1") and 0 < cell["C/au/I"] <= 1
      if row != "random":  # activity zero-shot comes from the pretraining run
        assert 0.0 <= cell["activity_zeroshot"] <= 1.0
      # The identity number, recomputed from the saved embeddings with sklearn directly.
      with np.load(w / "embeddings" / row / f"fold{fold}.npz") as f:
        z, subj, act = f["au_train/z"], f["au_train/subject_id"], f["au_train/activity_id"]
      tr = act % 2 == 0
      clf = LogisticRegression(max_iter=2000, random_state=0).fit(z[tr], subj[tr])
      assert cell["identity_acc"] == pytest.approx(np.mean(clf.predict(z[~tr]) == subj[~tr]))
  # Pretraining honoured the leakage guard: fold k's run never saw fold k's test subjects.
  for fold in (1, 2):
    cfg = json.loads((w / "pretrain" / "clef_pa_pi" / f"fold{fold}" / "config.json").read_text())
    assert cfg["fold"] == fold and cfg["data"]["leakage_guard"]
  # Stage 2 end to end: the lr is the best of the grid on held-out training subjects (fold 1's
  # part 1 trained, part 2 scored; never part 3, its test part), then used for every run.
  sel, lrs = result["finetune_selection"], s["e2e_lrs"]
  assert len(lrs) == 2 and set(map(float, sel["val"])) == set(lrs)
  val = {}
  for lr in lrs:
    vwd = w / "finetune" / "au-I+N+D" / f"lr{lr:g}-s3" / "random" / "val-fold1"
    cfg = json.loads((vwd / "config.json").read_text())
    assert (cfg["data"]["train_split"], cfg["data"]["test_split"]) == ("part1", "part2")
    assert cfg["optim"]["lr"] == lr
    val[lr] = json.loads((vwd / "results.json").read_text())["test/au_f1/mean"]
  assert sel["lr"] == max(lrs, key=lambda lr: (val[lr], -lr))
  assert set(result["finetune"]) == {
    f"{t}/{r}" for t in ("au", "au_I", "fer") for r in ("random", "clef_pa_pi")
  }
  for key in result["finetune"]:
    task, row = key.split("/")
    fwd = (
      w
      / "finetune"
      / {"au": "au-I+N+D", "au_I": "au-I", "fer": "fer-I+N+D"}[task]
      / f"lr{sel['lr']:g}-s3"
    )
    cfg = json.loads((fwd / row / "fold1" / "config.json").read_text())
    # The fold's own splits (train part1+part2, test part3), not the validation ones.
    assert cfg["optim"]["lr"] == sel["lr"] and cfg["fold"] == 1, key
    assert cfg["data"]["train_split"] == cfg["data"]["test_split"] == "", key
    assert cfg["finetune"]["head"] == ("linear" if task == "au_I" else "text"), key
    assert cfg["init"] == ("" if row == "random" else f"clef:{w / 'pretrain' / row / 'fold1'}")
  assert reproduce.select_lr({1e-3: 0.5, 1e-4: 0.5, 3e-4: 0.4}) == 1e-4  # ties: the smaller
  text = md.read_text(encoding="utf-8")
  # ablation, label-scarce, identity/zero-shot; end-to-end (random, CLEF), embedding maps (not
  # random)
  for row, want in (("random", 4), ("instance", 4), ("clef_pa_pi", 5)):
    assert text.count(f"| {reproduce.ROW_TITLES[row]} |") == want, row
  assert "AU F1 I+N+D" in text and "python main.py --config=configs/pretrain.py:tiny" in text
  # The references of the same run: the raw-pixel probes of both folds, on disk and printed.
  for fold in (1, 2):
    ref = json.loads((w / "references" / f"fold{fold}.json").read_text())
    assert 0 < ref["raw_pixels/au_f1"] <= 1 and 0 < ref["raw_pixels/fer_acc"] <= 1
  raw = reproduce.fmt(
    [
      json.loads((w / "references" / f"fold{k}.json").read_text())["raw_pixels/au_f1"]
      for k in (1, 2)
    ]
  )
  assert (
    f"| raw pixels: head I on 32×32 grey pixels (same probe, same C selection) | {raw} |" in text
  )
  for name in ("embeddings_instance.png", "embeddings_clef_pa_pi.png", "stage1_losses.png"):
    assert (fig / name).stat().st_size > 1000
  assert result["figures"]["relevance_figures"]
  # The Reading section is kept when the page is rewritten from results.json.
  mine = "## Reading\n\nA person wrote this.\n"
  md.write_text(
    text.replace(
      text.split(reproduce.READING_START)[1].split(reproduce.READING_END)[0], "\n" + mine
    ),
    encoding="utf-8",
  )
  reproduce.main(argv + ["--markdown_only"])
  again = md.read_text(encoding="utf-8")
  assert "A person wrote this." in again
  assert again.split("## Tables")[1] == text.split("## Tables")[1]


def test_references_match_sklearn(tmp_path):
  rng = np.random.default_rng(0)
  y = rng.choice([-1, 0, 1], size=(50, 3), p=[0.1, 0.6, 0.3]).astype(np.int8)
  expr = rng.choice([-1, 0, 1, 2], size=40, p=[0.1, 0.5, 0.3, 0.1])
  d = tmp_path / "embeddings" / "instance"
  d.mkdir(parents=True)
  np.savez(d / "fold2.npz", **{"au_test/au": y, "raf_test/expression": expr})
  (tmp_path / "references").mkdir()
  (tmp_path / "references" / "fold2.json").write_text(
    json.dumps({"raw_pixels/au_f1": 0.5, "raw_pixels/scarce_au_f1": 0.4, "raw_pixels/fer_acc": 0.7})
  )
  finetunes = {"au/init": {"test/au_f1/mean": 0.8}, "fer/init": {"test/fer/accuracy": 0.9}}
  got = reproduce.references(str(tmp_path), ["random", "instance"], [1, 2], finetunes)
  want_f1 = np.mean(
    [f1_score(y[y[:, j] >= 0, j], np.ones(int((y[:, j] >= 0).sum()))) for j in range(3)]
  )
  assert got["au_all_positive"] == [pytest.approx(want_f1)]  # fold 1 has no embeddings
  known = expr[expr >= 0]
  assert got["fer_majority"] == [pytest.approx(np.mean(known == 0))]
  assert got["raw_pixels/au_f1"] == [0.5] and got["raw_pixels/fer_acc"] == [0.7]
  assert got["supervised/au_f1"] == [0.8] and got["supervised/fer_acc"] == [0.9]
  assert reproduce.references(str(tmp_path), ["instance"], [2], {})["supervised/au_f1"] == []


def _init_settings(**kw):
  return _settings(quick=False, **kw)


def test_init_flag_sets_every_rows_start_and_tokenizer():
  """--init: the shipped foundation by default, 'none' = random weights, or any spec; the stage-1
  config each row runs gets that init (and the from-a-pretrained-tower recipe), the heads get
  its tokenizer."""
  s = _init_settings()
  assert s["init"] == f"hf:{reproduce.pretrain_config.FOUNDATION}"
  assert s["tokenizer"] == reproduce.pretrain_config.FOUNDATION
  pc = reproduce.pretrain_config.get_config(s["config_arg"])
  assert pc.init == s["init"] and pc.optim.lr == pytest.approx(5e-5)
  assert pc.pretrain.lambda_inst == 1.0
  assert reproduce.base_overrides(s, "/d", 2)["tokenizer"] == s["tokenizer"]

  s = _init_settings(init="none")
  assert s["init"] == "" and s["tokenizer"] == "embedded"
  pc = reproduce.pretrain_config.get_config(s["config_arg"])
  assert pc.init == "" and pc.optim.lr == pytest.approx(5e-4) and pc.pretrain.lambda_inst == 0
  assert reproduce.au_config(s, "/d", 1).init == ""  # 'none' is no init in every config

  s = _init_settings(init="hf:/ckpt/farl", config_arg="image_size=112")
  assert s["tokenizer"] == "/ckpt/farl" and s["config_arg"] == "init=hf:/ckpt/farl,image_size=112"
  pc = reproduce.pretrain_config.get_config(s["config_arg"])
  assert pc.init == "hf:/ckpt/farl" and pc.model.image_size == 112
  assert pc.optim.lr == pytest.approx(5e-5)
  assert _init_settings(init="openai:/ckpt/ViT-B-16.pt", tokenizer="/tok")["tokenizer"] == "/tok"
  # The quick run (tiny models) trains from scratch unless told otherwise.
  assert _settings()["init"] == ""


def test_init_row_needs_an_init_and_loads_it(tmp_path):
  with pytest.raises(SystemExit, match="'init' row needs a pretrained --init"):
    reproduce.main(["--quick", "--rows=init", f"--workdir={tmp_path}", "--cache_dir="])
  with pytest.raises(SystemExit, match="unknown"):
    reproduce.main(["--quick", "--rows=clip", f"--workdir={tmp_path}", "--cache_dir="])
  s = _init_settings()
  config = reproduce.au_config(s, "/d", 1)
  got = reproduce.row_params(s, str(tmp_path), "init", 1, config)
  _, want = reproduce.pretrained.load(s["init"], image_size=config.model.image_size)
  assert set(got) == set(reproduce.objectives.MODEL_KEYS) & set(want)
  np.testing.assert_array_equal(
    got["visual"]["positional_embedding"], want["visual"]["positional_embedding"]
  )
  # The architecture the rows are built with is the checkpoint's (the heads fit on top of it).
  model = models.build(config.model)
  shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  assert jax.tree.map(np.shape, {k: shapes[k] for k in got}) == jax.tree.map(np.shape, got)
