"""Evaluators as config data (big_vision style): `config.evals.<name> = dict(type=..., ...)`.

  ctx = common.Context(config, data, mesh, tok, common.make_predict_fns(objective), workdir)
  evs = evaluators.build(config, ctx)                    # validates every entry
  metrics = evaluators.run(evs, params, step=step)       # those due at `step`
  results = evaluators.run(evs, params, final=True)      # all of them

Each evaluator's metrics come out prefixed `<name>/`, e.g. `test/au_f1/mean`, with its wall
time as `<name>/eval_seconds`. One module per type; REGISTRY maps type names to classes.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Sequence

from clef_jax.evaluators import au_intensity_test
from clef_jax.evaluators import au_test
from clef_jax.evaluators import common
from clef_jax.evaluators import fer_test
from clef_jax.evaluators import linear_probe_au
from clef_jax.evaluators import zeroshot_activity
from clef_jax.evaluators import zeroshot_fer
from clef_jax.evaluators.common import Context, Evaluator, PredictFns, make_predict_fns

REGISTRY: dict[str, type[Evaluator]] = {
  "au_test": au_test.AuTest,
  "au_intensity_test": au_intensity_test.AuIntensityTest,
  "fer_test": fer_test.FerTest,
  "linear_probe_au": linear_probe_au.LinearProbeAu,
  "zeroshot_activity": zeroshot_activity.ZeroshotActivity,
  "zeroshot_fer": zeroshot_fer.ZeroshotFer,
}

__all__ = [
  "REGISTRY",
  "Context",
  "Evaluator",
  "PredictFns",
  "build",
  "common",
  "make_predict_fns",
  "run",
]


def build(config, ctx: Context, zero_shot_only: bool = False) -> list[Evaluator]:
  """One evaluator per `config.evals` entry (in order), each validating its fields.

  zero_shot_only: build only the zero-shot types (mode=zeroshot: no trained head).
  """
  out = []
  for name, ev in config.evals.items():
    t = ev.get("type", None)
    if t not in REGISTRY:
      raise ValueError(f"config.evals.{name}.type={t!r}: expected one of {sorted(REGISTRY)}")
    if zero_shot_only and not REGISTRY[t].zero_shot:
      continue
    out.append(REGISTRY[t](name, ev, ctx))
  return out


def due(evaluator: Evaluator, step: int | None = None, final: bool = False) -> bool:
  """final: always; at `step`: when every_steps > 0 divides it; step None: always."""
  if final or step is None:
    return True
  return bool(evaluator.every_steps) and step % evaluator.every_steps == 0


_DETAIL = re.compile(r"/AU\d+$|^fer/accuracy/|/confusion_matrix$")


def _summary(res: dict[str, Any]) -> str:
  """The headline numbers of one evaluator's metrics (no per-AU, per-class or matrices)."""
  items = []
  for k, v in res.items():
    if _DETAIL.search(k) or isinstance(v, (list, tuple, dict)):
      continue
    items.append(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}")
  return ", ".join(items)


def run(
  evaluators: Sequence[Evaluator], params, step: int | None = None, final: bool = False
) -> dict[str, Any]:
  """Runs the evaluators due (see `due`); flat {'<name>/<metric>': value, '<name>/eval_seconds'}."""
  out: dict[str, Any] = {}
  for ev in evaluators:
    if not due(ev, step, final):
      continue
    t0 = time.perf_counter()
    res = ev.run(params)
    sec = time.perf_counter() - t0
    logging.info("eval %s: %s (%.1f s)", ev.name, _summary(res), sec)
    out.update({f"{ev.name}/{k}": v for k, v in res.items()})
    out[f"{ev.name}/eval_seconds"] = sec
  return out
