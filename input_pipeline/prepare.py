r"""Prepares one dataset from the user's folder into TFDS ArrayRecord files, and summarises it.

  python -m input_pipeline.prepare --dataset=bp4d --manual_dir=/data/BP4D \
      --data_dir=~/tensorflow_datasets [--config=…] [--image_size=112] \
      [--align=landmarks|landmarks_or_detector|detector|none] [--align_margin=0.2]

Datasets: bp4d, bp4d_plus, disfa, raf_db, ferplus, affectnet, synthface, manifest (see
docs/datasets.md for the folder each expects). The reader pass and TFDS's writing show progress
bars; the summary lists examples per split, per-class counts or per-AU positives, and the
skipped items with their reasons. A missing, non-folder or empty --manual_dir is refused before
anything is written (exit code 1, naming the folder and what the dataset expects there).
Faces are aligned by default from the dataset's own landmarks (BP4D, DISFA, AffectNet, SynthFace)
or by the MTCNN detector (RAF-DB 'original'); --align picks another mode, --align_margin the
crop's margin (input_pipeline.align); both become part of the config name ('default_noalign').
Preparation builds under a temporary `<data_dir>/.prepare.…` folder and moves the dataset into
place only when complete, so a failed run leaves data_dir as it was: no dataset that looks
prepared, and with `--overwrite` the dataset prepared before stays intact and usable until the
new one replaces it. A dataset already prepared is reused (`--overwrite` rebuilds it).
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

from input_pipeline import builders
from input_pipeline import sources


def define_flags() -> None:
  """The command's flags; defined only when run as a script, so importing this module (for
  `summary`) never clashes with another program's flags."""
  flags.DEFINE_enum("dataset", None, sorted(builders.BUILDERS), "Dataset to prepare.")
  flags.DEFINE_string("manual_dir", None, "The user's dataset folder.")
  flags.DEFINE_string(
    "data_dir", os.path.expanduser("~/tensorflow_datasets"), "Where prepared datasets are written."
  )
  flags.DEFINE_string("config", None, "Builder config (default: the first one).")
  flags.DEFINE_integer("image_size", None, "Stored face size (default 112).")
  flags.DEFINE_bool("overwrite", False, "Rebuild a dataset that is already prepared.")
  flags.DEFINE_enum(
    "align",
    None,
    sorted(builders.ALIGN_MODES),
    "Face alignment (default: the dataset's; landmarks where it ships them).",
  )
  flags.DEFINE_float("align_margin", None, "Margin of the aligned crop (default 0.2).")


def summary(name: str, info: dict) -> str:
  """A human summary of `sources.info(...)`: splits, class counts / AU positives, skips."""
  lines = [f"{name}: {info.get('path', '')}"]
  stats = info.get("stats", {})
  expressions = info.get("expressions", [])
  aus = info.get("aus", [])
  for split, n in info["num_examples"].items():
    lines.append(f"  {split}: {n} examples")
    s = stats.get(split, {})
    hist = s.get("expression", [])
    if any(hist):
      lines.append("    " + ", ".join(f"{e} {c}" for e, c in zip(expressions, hist) if c))
    if aus and s.get("au_known"):
      lines.append(
        "    AU positives/known: "
        + ", ".join(f"AU{a} {p}/{k}" for a, p, k in zip(aus, s["au_positives"], s["au_known"]))
      )
  al = info.get("align")
  if al:
    margin = f", margin {al['margin']}" if al["mode"] != "none" else ""
    lines.append(f"  faces aligned: {al['mode']}{margin}")
  parts = info.get("parts", {})
  if parts:
    lines.append("  subject parts (fold f trains on the other parts, tests part k+1-f):")
    lines += [f"    part{k} ({len(v)}): {' '.join(v)}" for k, v in parts.items()]
  skips = info.get("skips", {})
  if skips:
    lines.append(f"  skipped {sum(skips.values())} item(s):")
    lines += [f"    {n:8d}  {reason}" for reason, n in skips.items()]
  else:
    lines.append("  no items skipped")
  return "\n".join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.dataset or not f.manual_dir:
    raise app.UsageError("--dataset and --manual_dir are required")
  name, data_dir = f.dataset, os.path.expanduser(f.data_dir)
  manual_dir = os.path.expanduser(f.manual_dir)
  cfg = None
  try:
    cfg = builders.make_config(
      name, f.config, f.image_size, align=f.align, align_margin=f.align_margin
    )
    reused = sources.is_prepared(name, data_dir, cfg.name) and not f.overwrite
    sources.prepare(name, manual_dir, data_dir, cfg.name, overwrite=f.overwrite)
    print(summary(name, sources.info(name, data_dir, cfg.name)))
    if reused:
      print(f"(already prepared: reused as it is; --overwrite rebuilds it from {manual_dir})")
  except (ValueError, KeyError, OSError) as e:  # DatasetError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    if cfg is not None and sources.is_prepared(name, data_dir, cfg.name):
      path = sources.dataset_dir(name, data_dir, cfg.name)
      print(f"the dataset prepared before is unchanged: {path}", file=sys.stderr)
    return 1
  print(
    f"open it with input_pipeline.sources.open_source({name!r}, <split>, {data_dir!r}, "
    f"config={cfg.name!r})"
  )
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
