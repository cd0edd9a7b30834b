r"""Runs every subject-exclusive fold of a config and writes the per-fold and averaged table.

  python scripts/run_folds.py --config=configs/finetune_au.py --workdir=W \
      [--folds=1,2,3] [--skip_done] [-- --config.init=clef:DIR --config.x=y ...]

Fold k runs `main.py --config=CONFIG --workdir=W/fold{k} --config.fold=k <extra overrides>` in
its own process (a crash or a leak in one fold cannot touch the next; a rerun resumes each fold
from its checkpoints). Then W/folds.json and W/folds.md hold, for every numeric metric of the
folds' results.json, its value per fold and its mean ± std over the folds (population std,
ddof=0). Lists (confusion matrices) and strings are left out of the table.

The protocol (docs/method.md): BP4D, BP4D+ and DISFA are evaluated 3-fold subject-exclusive and
averaged over folds; `config.fold` picks the test part (see clef_jax/datasets.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from typing import Any, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_folds(text: str) -> list[int]:
  """'1,2,3' -> [1, 2, 3]; an empty, repeated, non-integer or < 1 fold is an error."""
  try:
    folds = [int(f) for f in text.split(",") if f.strip()]
  except ValueError:
    raise ValueError(
      f"--folds={text!r}: expected comma-separated fold numbers, e.g. 1,2,3"
    ) from None
  if not folds or len(set(folds)) != len(folds) or min(folds) < 1:
    raise ValueError(f"--folds={text!r}: expected distinct fold numbers >= 1, e.g. 1,2,3")
  return folds


def fold_workdir(workdir: str, fold: int) -> str:
  return os.path.join(workdir, f"fold{fold}")


def fold_command(config: str, workdir: str, fold: int, extra: Sequence[str]) -> list[str]:
  """The main.py command line of one fold; `extra` overrides come last and may not set fold."""
  for arg in extra:
    if arg.split("=", 1)[0] in ("--config.fold", "--workdir", "--config"):
      raise ValueError(f"{arg!r}: run_folds sets --config, --workdir and --config.fold itself")
  return [
    sys.executable,
    os.path.join(ROOT, "main.py"),
    f"--config={config}",
    f"--workdir={fold_workdir(workdir, fold)}",
    f"--config.fold={fold}",
    *extra,
  ]


def read_results(workdir: str, folds: Sequence[int]) -> dict[int, dict[str, Any]]:
  """{fold: results.json of W/fold{k}}; a missing or unreadable file is an error naming it."""
  out = {}
  for k in folds:
    path = os.path.join(fold_workdir(workdir, k), "results.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: fold {k} has no results (did its run finish?)")
    try:
      with open(path, encoding="utf-8") as f:
        out[k] = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(out[k], dict):
      raise ValueError(f"{path}: expected a JSON object of metrics, got {type(out[k]).__name__}")
  return out


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def summarize(per_fold: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """{metric: {'folds': {k: v}, 'mean', 'std', 'n'}} over every numeric metric of any fold.

  A metric missing in some folds is averaged over the folds that have it (`n` says how many);
  non-finite values (an F1 of an AU with no positives) propagate into the mean as NaN.
  """
  names = sorted({k for r in per_fold.values() for k, v in r.items() if _is_number(v)})
  out = {}
  for name in names:
    vals = {k: float(r[name]) for k, r in per_fold.items() if _is_number(r.get(name))}
    xs = list(vals.values())
    mean = math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))
    out[name] = {"folds": vals, "mean": mean, "std": std, "n": len(xs)}
  return out


def _fmt(v: float) -> str:
  return f"{v:.4f}" if math.isfinite(v) else str(v)


def to_markdown(summary: Mapping[str, Mapping[str, Any]], folds: Sequence[int], title: str) -> str:
  """A markdown table: one row per metric, one column per fold, then mean ± std."""
  head = "| metric | " + " | ".join(f"fold {k}" for k in folds) + " | mean ± std |"
  lines = [f"# {title}", "", head, "|---" * (len(folds) + 2) + "|"]
  for name, s in summary.items():
    cells = [_fmt(s["folds"][k]) if k in s["folds"] else "—" for k in folds]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(s['mean'])} ± {_fmt(s['std'])} |")
  return "\n".join(lines) + "\n"


def write_tables(
  workdir: str, folds: Sequence[int], config: str = "", extra: Sequence[str] = ()
) -> dict[str, Any]:
  """Reads W/fold{k}/results.json and writes W/folds.json and W/folds.md; returns the JSON."""
  per_fold = read_results(workdir, folds)
  summary = summarize(per_fold)
  out = {
    "config": config,
    "overrides": list(extra),
    "folds": list(folds),
    "per_fold": {str(k): per_fold[k] for k in folds},
    "mean": {n: s["mean"] for n, s in summary.items()},
    "std": {n: s["std"] for n, s in summary.items()},
    "n": {n: s["n"] for n, s in summary.items()},
  }
  with open(os.path.join(workdir, "folds.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2, sort_keys=True)
  title = f"{config or 'runs'}: {len(folds)} folds"
  with open(os.path.join(workdir, "folds.md"), "w", encoding="utf-8") as f:
    f.write(to_markdown(summary, folds, title))
  return out


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  argv = list(argv)
  extra = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1 :]
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--config", required=True, help="configs/<mode>.py[:args], as main.py takes it")
  p.add_argument("--workdir", required=True, help="fold k runs in WORKDIR/fold{k}")
  p.add_argument("--folds", default="1,2,3", help="comma-separated folds (default 1,2,3)")
  p.add_argument(
    "--skip_done", action="store_true", help="do not rerun a fold whose results.json exists"
  )
  args = p.parse_args(argv)
  return args, extra


def main(argv: Sequence[str]) -> int:
  args, extra = parse_args(argv)
  try:
    folds = parse_folds(args.folds)
    commands = {k: fold_command(args.config, args.workdir, k, extra) for k in folds}
  except ValueError as e:
    print(f"run_folds: {e}", file=sys.stderr)
    return 2
  os.makedirs(args.workdir, exist_ok=True)
  for k in folds:
    done = os.path.isfile(os.path.join(fold_workdir(args.workdir, k), "results.json"))
    if args.skip_done and done:
      print(f"run_folds: fold {k} already has results.json; skipped (--skip_done)", flush=True)
      continue
    print(f"run_folds: fold {k}: {' '.join(commands[k])}", flush=True)
    rc = subprocess.run(commands[k], cwd=ROOT, check=False).returncode
    if rc != 0:
      print(
        f"run_folds: fold {k} failed (exit code {rc}); its workdir is "
        f"{fold_workdir(args.workdir, k)}. Rerun to resume it.",
        file=sys.stderr,
      )
      return rc
  out = write_tables(args.workdir, folds, args.config, extra)
  print(f"run_folds: wrote {os.path.join(args.workdir, 'folds.md')} and folds.json", flush=True)
  for name, mean in out["mean"].items():
    if name.endswith("/mean") or name.endswith("accuracy"):
      print(f"  {name}: {mean:.4f} ± {out['std'][name]:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
