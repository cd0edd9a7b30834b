"""The evaluator registry (clef_jax.evaluators): compile once, config errors, zero-shot numbers.

Tiny random towers (configs/*.py:tiny) on the session's tiny SynthFace; references are numpy
formulas over embeddings computed without the evaluators' jitted functions.
"""

import logging

import jax
import ml_collections
import numpy as np
import pytest
from jax._src import dispatch

from clef_jax import datasets as data_lib
from clef_jax import evaluators
from clef_jax import models
from clef_jax import objectives
from clef_jax import prompts
from clef_jax import sharding
from clef_jax import tokenizer as tokenizer_lib
from clef_jax.evaluators import common
from configs import finetune_fer
from configs import zeroshot
from input_pipeline import sources

# Every jit executable is built (or loaded from the persistent cache) under this event, once per
# new (function, shapes, shardings); a cache hit of a jitted function records nothing.
COMPILE_EVENT = dispatch.BACKEND_COMPILE_EVENT
assert COMPILE_EVENT == "/jax/core/compile/backend_compile_duration"


class _CompileCounter:
  def __init__(self):
    self.count = 0

  def __call__(self, event, duration, **kwargs):
    del duration, kwargs
    self.count += event == COMPILE_EVENT

  def __enter__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def _context(config, objective, data=None) -> common.Context:
  mesh = sharding.make_mesh(config.mesh)
  tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
  data = data or data_lib.setup(config)
  return common.Context(config, data, mesh, tok, common.make_predict_fns(objective), None)


def _params(config, model, objective, mesh):
  r_model, r_heads = jax.random.split(jax.random.key(0))
  params = {**models.init(model, r_model), "heads": objective.init_heads(r_heads)}
  params = jax.device_get(params)
  return params, sharding.reshard(
    params, sharding.infer_sharding(params, config.sharding_rules, mesh)
  )


@pytest.fixture(scope="module")
def zs(tiny_data_dir):
  """A zero-shot run: tiny random towers, the RAF-like test set; (ctx, host params, params)."""
  config = zeroshot.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  model = models.build(config.model)
  objective = objectives.embedding_objective(config, model)
  ctx = _context(config, objective)
  host, params = _params(config, model, objective, ctx.mesh)
  return ctx, model, host, params


def _ev(**fields):
  return ml_collections.ConfigDict(fields)


# ------------------------------------------------------------------------------------------
# 1. A second evaluation compiles nothing.
# ------------------------------------------------------------------------------------------


def test_second_evaluation_compiles_nothing(zs, tiny_data_dir):
  """The old evaluate.Evaluators built `jax.jit(objective.embed_images)` (and predict,
  encode_tokens) inside every call: a fresh jit wrapper per call, so every evaluation traced and
  compiled again — the second run below counted 1 compile per function there (checked on jax
  0.10.2: `jax.jit(obj.embed_images)(p, x)` three times = 3 backend compiles), and this test's
  `== 0` fails. PredictFns jits once per run."""
  ctx, _, _, params = zs
  config = ctx.config.copy_and_resolve_references()
  config.evals.activity = _ev(type="zeroshot_activity", data=dict(config="bp4d"))
  config.evals.zeroshot.texts = "both"
  evs = evaluators.build(config, ctx)
  evs = sorted(evs, key=lambda e: e.name, reverse=True)  # ConfigDict iterates by sorted key
  assert [(e.name, type(e).__name__) for e in evs] == [
    ("zeroshot", "ZeroshotFer"),
    ("activity", "ZeroshotActivity"),
  ]
  with _CompileCounter() as first:
    r1 = evaluators.run(evs, params, final=True)
  with _CompileCounter() as second:
    r2 = evaluators.run(evs, params, final=True)
  assert first.count > 0
  assert second.count == 0
  drop = ("zeroshot/eval_seconds", "activity/eval_seconds")
  assert {k: v for k, v in r1.items() if k not in drop} == {
    k: v for k, v in r2.items() if k not in drop
  }
  # The data override is opened once and cached on the context.
  assert ctx.data_for(config.evals.activity) is evs[1].data is not ctx.data
  # The tiny sizes name its prepared config (the default sizes' is plain 'bp4d').
  tiny_bp4d = sources.synthface_config("bp4d", **config.data.synthface.to_dict())
  assert evs[1].data.builder_config == tiny_bp4d != "bp4d"


def test_head_evaluator_compiles_once(tiny_data_dir):
  """fer_test goes through PredictFns.label_logits (the trained head), also jitted once."""
  config = finetune_fer.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  model = models.build(config.model)
  tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
  data = data_lib.setup(config)
  objective = objectives.finetune_objective(config, model, tok, data.classes)
  ctx = _context(config, objective, data)
  _, params = _params(config, model, objective, ctx.mesh)
  (ev,) = evaluators.build(config, ctx)
  with _CompileCounter() as first:
    r1 = ev.run(params)
  with _CompileCounter() as second:
    r2 = ev.run(params)
  assert first.count > 0 and second.count == 0
  assert r1["fer/accuracy"] == r2["fer/accuracy"]
  assert r1["fer/num_examples"] == len(data.test)


# ------------------------------------------------------------------------------------------
# 2. Config errors name the key.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "fields, match",
  [
    (dict(type="zeroshot_frobnicate"), r"config\.evals\.bad\.type='zeroshot_frobnicate': expected"),
    (dict(), r"config\.evals\.bad\.type=None: expected one of \['au_intensity_test', 'au_test'"),
    (dict(type="zeroshot_fer", protocol="magic"), r"config\.evals\.bad\.protocol='magic'"),
    (dict(type="zeroshot_fer", texts="poems"), r"config\.evals\.bad\.texts='poems'"),
    (
      dict(type="zeroshot_fer", protocol="unseen_expressions", unseen=("fear", "boredom")),
      r"config\.evals\.bad\.unseen: \['boredom'\] are not classes",
    ),
    (
      dict(type="zeroshot_fer", protocol="unseen_expressions", seen=("joy",), unseen=("fear",)),
      r"config\.evals\.bad\.seen: \['joy'\] are not classes",
    ),
    (
      dict(type="zeroshot_fer", protocol="unseen_expressions", seen=("fear",), unseen=("fear",)),
      r"config\.evals\.bad\.unseen: \['fear'\] are also in config\.evals\.bad\.seen",
    ),
    (
      dict(type="zeroshot_fer", protocol="unseen_expressions", unseen=()),
      r"config\.evals\.bad\.unseen=\(\)",
    ),
    (dict(type="zeroshot_fer", promt="x"), r"config\.evals\.bad\.promt: unknown field"),
    (dict(type="zeroshot_fer", every_steps=-1), r"config\.evals\.bad\.every_steps=-1"),
    (dict(type="linear_probe_au", max_train=0), r"config\.evals\.bad\.max_train=0"),
    (dict(type="linear_probe_au", val_fraction=1.0), r"config\.evals\.bad\.val_fraction=1\.0"),
    (dict(type="linear_probe_au", Cs=(1.0, -1.0)), r"config\.evals\.bad\.Cs=\(1\.0, -1\.0\)"),
    (
      dict(type="zeroshot_activity"),
      r"config\.evals\.bad\.type='zeroshot_activity': .*no activity",
    ),
    (dict(type="fer_test"), r"config\.evals\.bad\.type='fer_test' predicts with a trained head"),
    (
      dict(type="zeroshot_fer", data=dict(confg="raf")),
      r"config\.evals\.bad\.data\.confg: not a field of config\.data",
    ),
    (dict(type="zeroshot_fer", data=dict(config=3)), r"config\.evals\.bad\.data\.config=3"),
  ],
)
def test_config_errors_name_the_key(zs, fields, match):
  ctx = zs[0]
  config = ctx.config.copy_and_resolve_references()
  config.evals = ml_collections.ConfigDict({"bad": fields})
  with pytest.raises(ValueError, match=match):
    evaluators.build(config, ctx)


def test_zero_shot_only_skips_head_evaluators(zs):
  ctx = zs[0]
  config = ctx.config.copy_and_resolve_references()
  config.evals.test = _ev(type="fer_test")  # would need a trained head
  assert [e.name for e in evaluators.build(config, ctx, zero_shot_only=True)] == ["zeroshot"]


def test_zeroshot_config_is_an_evaluator():
  c = zeroshot.get_config("protocol=unseen_expressions")
  assert "zeroshot" not in c
  assert c.evals.zeroshot.type == "zeroshot_fer"
  assert c.evals.zeroshot.protocol == "unseen_expressions"
  assert c.evals.zeroshot.texts == "names"
  assert evaluators.REGISTRY[c.evals.zeroshot.type].zero_shot


# ------------------------------------------------------------------------------------------
# 3. zeroshot_fer against numpy.
# ------------------------------------------------------------------------------------------


def _np_unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_classifier(model, host, tok, classes, texts):
  """Prompt ensembles with numpy: per template table [T, C] of prompts, the eager (un-jitted)
  text tower, mean over templates, renormalised; 'both' = mean of the two, renormalised."""
  tables = []
  if texts in ("names", "both"):
    tables.append([[t.format(c) for c in classes] for t in prompts.templates("name")])
  if texts in ("descriptions", "both"):
    tables.append(
      [
        [t.format(prompts.expression_description(c)) for c in classes]
        for t in prompts.templates("description")
      ]
    )
  towers = objectives.model_params(host)
  ens = []
  for table in tables:
    z = np.stack(
      [
        np.asarray(model.apply({"params": towers}, tok(row), method=model.encode_text), np.float64)
        for row in table
      ]
    )  # [T, C, D]
    ens.append(_np_unit(z.mean(0)))
  return _np_unit(np.mean(ens, axis=0))


def _test_labels(data):
  """The test split's expression names, read from the source (embed_source keeps this order)."""
  names = prompts.expressions()
  return np.array([names[int(data.test[i]["expression"])] for i in range(len(data.test))])


@pytest.mark.parametrize("texts", ["names", "both"])
def test_zeroshot_prompts_matches_numpy(zs, texts):
  ctx, model, host, params = zs
  ev_config = ctx.config.evals.zeroshot.copy_and_resolve_references()
  ev_config.texts = texts
  ev = evaluators.REGISTRY["zeroshot_fer"]("zeroshot", ev_config, ctx)
  res = ev.run(params)
  classes = list(ctx.data.classes)
  z = ev.embed(params, ctx.data.test, ())["z"].astype(np.float64)
  zcls = _reference_classifier(model, host, ctx.tok, classes, texts)
  y = np.array([classes.index(c) for c in _test_labels(ctx.data)])
  pred = (z @ zcls.T).argmax(-1)
  confusion = np.zeros((len(classes), len(classes)), np.int64)
  np.add.at(confusion, (y, pred), 1)
  assert res["protocol"] == "prompts" and res["texts"] == texts
  assert res["fer/num_examples"] == len(y) == len(ctx.data.test)
  assert res["fer/accuracy"] == pytest.approx(np.mean(pred == y))
  assert np.array_equal(np.asarray(res["fer/confusion_matrix"]), confusion)
  assert res["chance"] == pytest.approx(1 / len(classes))


def test_zeroshot_unseen_expressions_matches_numpy(zs):
  ctx, model, host, params = zs
  ev_config = ctx.config.evals.zeroshot.copy_and_resolve_references()
  ev_config.protocol = "unseen_expressions"
  seen, unseen = list(ev_config.seen), list(ev_config.unseen)
  ev = evaluators.REGISTRY["zeroshot_fer"]("zeroshot", ev_config, ctx)
  res = ev.run(params)
  classes = list(ctx.data.classes)
  z = ev.embed(params, ctx.data.test, ())["z"].astype(np.float64)
  zcls = _reference_classifier(model, host, ctx.tok, classes, "names")
  names = _test_labels(ctx.data)
  keep = np.isin(names, unseen)
  sims = z[keep] @ zcls.T
  pred_all = np.array(classes)[sims.argmax(-1)]
  cols = [classes.index(c) for c in unseen]
  pred_unseen = np.array(unseen)[sims[:, cols].argmax(-1)]
  assert res["split"] == f"seen={seen} unseen={unseen}"
  assert res["num_examples"] == keep.sum() > 0
  assert res["unseen_accuracy_all_classes"] == pytest.approx(np.mean(pred_all == names[keep]))
  assert res["unseen_accuracy_unseen_only"] == pytest.approx(np.mean(pred_unseen == names[keep]))
  assert res["chance_unseen_only"] == pytest.approx(1 / len(unseen))


# ------------------------------------------------------------------------------------------
# 4. Scheduling and the flat, prefixed output.
# ------------------------------------------------------------------------------------------


class _Calls(common.Evaluator):
  zero_shot = True
  fields = {}

  def run(self, params):
    return {"value": 0.5, "per/AU12": 0.25}


def test_every_steps_scheduling(caplog):
  config = ml_collections.ConfigDict(dict(eval_every_steps=3))
  ctx = common.Context(config, data=None, mesh=None, tok=None, fns=None)
  evs = [
    _Calls("two", _ev(every_steps=2), ctx),
    _Calls("default", _ev(), ctx),  # config.eval_every_steps
    _Calls("end", _ev(every_steps=0), ctx),  # only at the end
  ]
  assert [e.every_steps for e in evs] == [2, 3, 0]
  ran = {s: sorted({k.split("/")[0] for k in evaluators.run(evs, None, step=s)}) for s in range(7)}
  assert ran == {
    0: ["default", "two"],
    1: [],
    2: ["two"],
    3: ["default"],
    4: ["two"],
    5: [],
    6: ["default", "two"],
  }
  with caplog.at_level(logging.INFO):
    out = evaluators.run(evs, None, step=5, final=True)
  assert set(out) == {
    f"{n}/{k}" for n in ("two", "default", "end") for k in ("value", "per/AU12", "eval_seconds")
  }
  assert out["end/value"] == 0.5 and out["end/eval_seconds"] >= 0
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval ")]
  assert len(lines) == 3
  assert lines[2].startswith("eval end: value=0.5000") and lines[2].endswith(" s)")
  assert "AU12" not in lines[2]


def test_probe_chooses_c_on_held_out_training_subjects_like_sklearn_grid_search():
  """The probe's C: chosen on whole held-out training subjects (never the test rows), the
  smaller C on a tie, refitted on all training rows; against sklearn's GridSearchCV over a
  StandardScaler + balanced LogisticRegression pipeline with the same predefined split."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import GridSearchCV  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import PredefinedSplit  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top

  from clef_jax.evaluators import linear_probe_au  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(3)
  # Few rows, many noisy dimensions: regularisation matters, so the sweep has a real optimum.
  n, d = 160, 120
  x = rng.normal(size=(n, d))
  w = np.zeros(d)
  w[:4] = 1.0
  y = (x @ w + rng.normal(scale=1.5, size=n) > 0.8).astype(np.int64)[:, None]
  groups = np.repeat(np.arange(16), 10)  # 16 subjects, 10 frames each
  xte = rng.normal(size=(80, d))
  yte = (xte @ w > 0.8).astype(np.int64)[:, None]

  val = linear_probe_au.validation_subjects(groups, 0.25, seed=0)
  assert val.sum() == 40 and len(np.unique(groups[val])) == 4  # 4 whole subjects
  assert not set(groups[val]) & set(groups[~val])
  cs = (1e-3, 1e-2, 0.1, 1.0, 10.0)
  c, val_f1, scores = linear_probe_au.select_c(x, y, groups, cs=cs, val_fraction=0.25, seed=0)
  assert len(set(np.round(list(scores.values()), 6))) > 1  # C changes the validation score
  out = linear_probe_au.probe_with_validation(
    x, y, groups, xte, yte, [12], cs=cs, val_fraction=0.25, seed=0
  )

  pipe = make_pipeline(
    StandardScaler(), LogisticRegression(max_iter=2000, random_state=0, class_weight="balanced")
  )
  search = GridSearchCV(
    pipe,
    {"logisticregression__C": list(cs)},
    scoring="f1",
    cv=PredefinedSplit(np.where(val, 0, -1)),
    refit=True,
  ).fit(x, y[:, 0])
  assert c == search.best_params_["logisticregression__C"] == out["C"]
  np.testing.assert_allclose(val_f1, search.best_score_, rtol=1e-9)
  assert out["val/au_f1/mean"] == val_f1
  ref = search.predict(xte)
  tp, fp, fn = [np.sum((ref == a) & (yte[:, 0] == b)) for a, b in ((1, 1), (1, 0), (0, 1))]
  np.testing.assert_allclose(out["au_f1/AU12"], 2 * tp / (2 * tp + fp + fn), rtol=1e-9)

  with pytest.raises(ValueError, match="1 subject"):
    linear_probe_au.select_c(x, y, np.zeros(n, int))


def test_raw_pixel_reference_is_grey_box_downsampling_and_an_sklearn_probe():
  """linear_probe_au's reference features against numpy (luma, 2x2 block means) and
  its probe against a plain sklearn pipeline on the same features."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top

  from clef_jax.evaluators import linear_probe_au  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
  feats = linear_probe_au.raw_pixels(list(images))
  # Pillow's fixed-point ITU-R 601-2 luma, then the mean of each 2x2 block.
  rgb = images.astype(np.int64)
  grey = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
  blocks = grey.reshape(40, 32, 2, 32, 2).mean((2, 4))
  assert feats.shape == (40, 32 * 32)
  np.testing.assert_allclose(feats, blocks.reshape(40, -1), rtol=1e-6)

  # Labels that depend on the pixels, so the probe has something to find; AU 2 is unknown (-1)
  # on some rows, AU 3 has one class only.
  y = np.stack(
    [feats[:, 0] > feats[:, 0].mean(), feats[:, 5] > feats[:, 5].mean(), feats[:, 9] > 100],
    1,
  ).astype(np.int64)
  y[:5, 1] = -1
  y = np.concatenate([y, np.zeros((40, 1), np.int64)], 1)
  xtr, xte = linear_probe_au.standardize(feats[:30], feats[30:])
  pred = linear_probe_au.au_probe(xtr, y[:30], xte, seed=0)
  scaler = StandardScaler().fit(feats[:30])
  for j in range(3):
    known = y[:30, j] >= 0
    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=0, class_weight="balanced")
    clf.fit(scaler.transform(feats[:30])[known], y[:30, j][known])
    np.testing.assert_array_equal(pred[:, j], clf.predict(scaler.transform(feats[30:])))
  np.testing.assert_array_equal(pred[:, 3], 0)  # one class seen: predicted as is
