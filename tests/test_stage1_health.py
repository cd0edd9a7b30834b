"""Stage 1 from the shipped foundation init does not collapse, and the monitor sees collapse.

docs/method.md §3: from the foundation init, the activity term's cheapest way down is to put
every view at one point (`loss_pi` -> its collapse value, effective rank -> 1). A short run of
the default recipe (configs/pretrain.py, foundation init) keeps the embeddings spread; the
recipe it replaced (lr 5e-4, no instance term, every view a negative) is run next to it, so the
test fails if the monitor stops telling the two apart.
"""

import json
import os

import numpy as np
import pytest

from clef_jax import train
from configs import common
from configs import pretrain
from input_pipeline import sources

pytestmark = pytest.mark.slow

STEPS = 12
SIZES = dict(
  seed=0,
  subjects=9,
  frames_per_task=8,
  raf_train=16,
  raf_test=16,
  size=64,
  disfa_subjects=0,
  disfa_frames=8,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("stage1_data")
  sources.ensure_synthface(str(d), **SIZES)
  return str(d)


def _run(workdir, data_dir, **overrides):
  c = pretrain.get_config()
  assert c.init.startswith("hf:")  # the shipped foundation
  c.data.data_dir = data_dir
  for k, v in SIZES.items():
    c.data.synthface[k] = v
  c.evals = {}
  c = common.set_fields(
    c,
    {
      "total_steps": STEPS,
      "optim.warmup_steps": 4,
      "log_every_steps": 1,
      "checkpoint_every_steps": 0,
    }
    | overrides,
  )
  train.train_and_evaluate(c, str(workdir))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in rows if "loss_pi" in r]


def test_default_stage1_from_the_foundation_stays_spread_and_the_old_recipe_collapses(
  tmp_path, data_dir
):
  new = _run(tmp_path / "default", data_dir)
  old = _run(
    tmp_path / "old",
    data_dir,
    **{"optim.lr": 5e-4, "pretrain.lambda_inst": 0.0, "pretrain.pi_negatives": "all"},
  )
  for rows in (new, old):
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
      assert 1.0 <= r["health/effective_rank"] <= 128.0
      assert -1.0 <= r["health/mean_cosine"] <= 1.0
  # Both start from the same towers on the same first batch.
  np.testing.assert_allclose(
    new[0]["health/effective_rank"], old[0]["health/effective_rank"], rtol=1e-3
  )
  rank0 = new[0]["health/effective_rank"]
  # The old recipe: the views fall together (rank less than half of the init's, every pair of
  # views nearly parallel) and L_II' sits at its collapse value log(2B - 1) = log(127).
  np.testing.assert_allclose(old[-1]["health/loss_pi_at_collapse"], np.log(127), rtol=1e-5)
  assert old[-1]["health/effective_rank"] < 0.5 * rank0
  assert old[-1]["health/mean_cosine"] > 0.9
  assert abs(old[-1]["loss_pi"] - old[-1]["health/loss_pi_at_collapse"]) < 0.1
  # The default: the spread of the init is kept.
  assert new[-1]["health/effective_rank"] > 0.8 * rank0
  assert new[-1]["health/mean_cosine"] < 0.8
