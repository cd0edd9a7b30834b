r"""Builds the shipped foundation model (the CLIP/FaRL analog) from nothing, offline.

  python tools/build_foundation.py                     # -> models/synthface-clip (~15 min, 2 cores)
  python tools/build_foundation.py --quick --out /tmp/f --workdir /tmp/w   # a minute: the test

Steps (docs/foundation.md):
  1. SynthFace-Captions (input_pipeline/synthface/captions.py) is generated and prepared as a
     `manifest` dataset under --data_dir, as a user's own image-text data would be.
  2. A CLIP-format BPE (vocab.json + merges.txt) is trained on the training captions and the
     prompt texts (tools/build_tokenizer.py --clip_out), deterministic.
  3. `main.py --config=configs/foundation.py` trains both towers with CLIP's InfoNCE (stage 0)
     and runs the foundation evaluators (zero-shot expressions, linear AU probe and references).
  4. The final weights are written as a transformers CLIP folder (config.json, model.safetensors
     in --dtype, the tokenizer files) with build_info.json and a README: size, command, commit,
     data seed, evaluation results. The folder loads with `transformers.CLIPModel` and with
     `clef_jax.pretrained.load('hf:DIR')`, which this script checks before it finishes.
Extra `--config.x=v` arguments are passed on to main.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import build_tokenizer  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import foundation as foundation_config  # noqa: E402
from clef_jax import prompts  # noqa: E402


def _git_commit() -> str:
  try:
    out = subprocess.run(
      ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
    return out + ("+uncommitted changes" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def tokenizer_corpus(data_dir: str, config_name: str) -> list[str]:
  """Training lines of the BPE: every training caption, every prompt text, then the English
  word list of the embedded tokenizer (so that words outside the captions split sensibly)."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import sources  # pylint: disable=g-import-not-at-top

  train = sources.open_source("manifest", "train", data_dir, config_name, decode_images=False)
  captions = [str(c) for c in pipeline.label_table(train, ("caption",))["caption"] if str(c)]
  words = build_tokenizer.read_words()
  n = 16
  return (
    captions + prompts.all_texts() + [" ".join(words[i : i + n]) for i in range(0, len(words), n)]
  )


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=str(ROOT / foundation_config.FOUNDATION_DIR))
  ap.add_argument("--workdir", default=str(ROOT / "workdirs" / "foundation"))
  ap.add_argument("--data_dir", default=os.environ.get("CLEF_DATA_DIR", str(ROOT / "data")))
  ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
  ap.add_argument("--quick", action="store_true", help="tiny model and corpus (tests)")
  ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  args, extra = ap.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    ap.error(f"unknown arguments {bad} (only --config.x=v overrides are passed to main.py)")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  out = pathlib.Path(args.out).absolute()
  if out.exists() and any(out.iterdir()) and not args.overwrite:
    print(f"error: {out} exists and is not empty; pass --overwrite to replace it", file=sys.stderr)
    return 2
  started = time.time()
  config_arg = "tiny" if args.quick else ""
  config = foundation_config.get_config(config_arg)
  for a in extra:  # the data sizes may be overridden: generate with the same ones
    key, _, value = a.removeprefix("--config.").partition("=")
    if key.startswith("data.captions."):
      field = key.removeprefix("data.captions.")
      config.data.captions[field] = type(config.data.captions[field])(value)

  # 1. The corpus.
  from input_pipeline import sources  # pylint: disable=g-import-not-at-top

  data_dir = os.path.abspath(args.data_dir)
  path = sources.ensure_synthface_captions(data_dir, **config.data.captions.to_dict())
  print(f"[1/4] SynthFace-Captions prepared: {path}", flush=True)

  # 2. The tokenizer.
  workdir = pathlib.Path(args.workdir).absolute()
  tok_dir = workdir / "tokenizer"
  lines = tokenizer_corpus(data_dir, sources.CAPTIONS_CONFIG)
  tok = build_tokenizer.build_clip(lines, config.model.vocab_size)
  build_tokenizer.save_clip_folder(tok, tok_dir, config.model.context_length)
  print(f"[2/4] tokenizer: {tok.get_vocab_size()} ids from {len(lines)} lines -> {tok_dir}")

  # 3. Training (the same entry point a user runs).
  train_dir = workdir / "train"
  command = [
    sys.executable,
    str(ROOT / "main.py"),
    f"--config={ROOT / 'configs' / 'foundation.py'}" + (f":{config_arg}" if config_arg else ""),
    f"--workdir={train_dir}",
    f"--config.tokenizer={tok_dir}",
    f"--config.data.data_dir={data_dir}",
    *extra,
  ]
  print("[3/4] " + " ".join(command), flush=True)
  subprocess.run(command, check=True, cwd=str(ROOT))
  with open(train_dir / "results.json", encoding="utf-8") as f:
    results = json.load(f)

  # 4. Export as a transformers CLIP folder, then check it loads to the same model.
  import numpy as np  # pylint: disable=g-import-not-at-top

  from clef_jax import export  # pylint: disable=g-import-not-at-top
  from clef_jax import pretrained  # pylint: disable=g-import-not-at-top

  model_config, params = pretrained.load(f"clef:{train_dir}")
  info = {
    "build_command": " ".join(["python tools/build_foundation.py", *(argv or sys.argv[1:])]),
    "commit": _git_commit(),
    "data": {"dataset": "manifest/" + sources.CAPTIONS_CONFIG, **config.data.captions.to_dict()},
    "train": {
      "config": "configs/foundation.py" + (f":{config_arg}" if config_arg else ""),
      "steps": int(results.get("step", 0)),
      "batch_size": int(config.batch_size),
      "overrides": extra,
    },
    "results": {k: v for k, v in results.items() if isinstance(v, (int, float))},
    "weights_dtype": args.dtype,
    "build_seconds": round(time.time() - started, 1),
  }
  export.save_hf(
    out,
    params,
    model_config,
    tokenizer_dir=tok_dir,
    dtype=args.dtype,
    extra_readme=readme(info),
    overwrite=args.overwrite,
  )
  with open(out / "build_info.json", "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1, sort_keys=True)
    f.write("\n")
  _, loaded = pretrained.load(f"hf:{out}")
  worst = max(
    float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
    for a, b in zip(_leaves(loaded), _leaves(params))
  )
  size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
  print(
    f"[4/4] wrote {out} ({size / 2**20:.1f} MiB, weights {args.dtype}; largest weight change "
    f"from the {args.dtype} cast {worst:.2e}) in {info['build_seconds']:.0f} s"
  )
  for k, v in sorted(info["results"].items()):
    if isinstance(v, float) and not k.endswith("eval_seconds"):
      print(f"  {k}: {v:.4f}")
  return 0


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top

  return [
    x for _, x in sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda kv: str(kv[0]))
  ]


def readme(info: dict) -> str:
  """The model card's build section."""
  r = info["results"]
  lines = [
    "Built by `" + info["build_command"].strip() + "` at commit " + info["commit"] + ".",
    f"Data: SynthFace-Captions, seed {info['data']['seed']}, {info['data']['identities']} "
    f"identities x {info['data']['images_per_identity']} images.",
    f"Training: {info['train']['config']}, {info['train']['steps']} steps of "
    f"{info['train']['batch_size']} pairs; {info['build_seconds']:.0f} s in all.",
    "",
    "| evaluation | value |",
    "|---|---|",
  ]
  lines += [f"| {k} | {v:.4f} |" for k, v in sorted(r.items()) if isinstance(v, float)]
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
