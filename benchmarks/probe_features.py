r"""Where the AU information is: linear AU probes on several feature sets of frozen towers.

  python benchmarks/probe_features.py --init=hf:models/synthface-clip [--init=clef:WORKDIR ...]

For each --init (and a random-init tower of the default architecture, and the frames' raw
pixels) it fits the evaluator's probe (`linear_probe_au`: standardised features, balanced
logistic regression per AU) on 2,000 training frames of SynthFace's BP4D-like fold 1 and scores
held-out-subject mean AU F1 on the test part (with --validation: trained on fold 1's first
training part and scored on its second, held-out *training* subjects, for choosing a recipe
without the test fold), on:
  z           the normalised embedding (what `linear_probe_au` probes)
  cls         the class token before the projection (ln_post)
  patch_mean  the mean of the final patch tokens
  patch_map   the final patch tokens concatenated (a linear probe of the feature map)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--init", action="append", default=[], help="pretrained.load spec (repeat)")
  ap.add_argument("--data_dir", default="data")
  ap.add_argument("--train_frames", type=int, default=2000)
  ap.add_argument(
    "--validation", action="store_true", help="train on part1, score part2 (fold 1's training)"
  )
  args = ap.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from clef_jax import datasets as data_lib  # pylint: disable=g-import-not-at-top
  from clef_jax import models  # pylint: disable=g-import-not-at-top
  from clef_jax import pretrained  # pylint: disable=g-import-not-at-top
  from clef_jax.evaluators import common  # pylint: disable=g-import-not-at-top
  from clef_jax.evaluators import linear_probe_au as probe_lib  # pylint: disable=g-import-not-at-top
  from configs import pretrain  # pylint: disable=g-import-not-at-top

  config = pretrain.get_config("init=none")
  config.data.data_dir = args.data_dir
  if args.validation:
    config.data.train_split, config.data.test_split = "part1", "part2"
  data = data_lib.setup(config)
  idx = np.sort(np.random.default_rng(0).choice(len(data.train), args.train_frames, replace=False))

  def frames(source):
    images, aus = [], []
    for b in data_lib.eval_batches(config, data, source, ("image", "au", "mask"), 128):
      images.append(b["image"][b["mask"]])
      aus.append(b["au"][b["mask"]])
    return np.concatenate(images), np.concatenate(aus)

  xtr, ytr = frames(data_lib.Subset(data.train, idx))
  xte, yte = frames(data.test)

  def score(tr, te) -> float:
    a, b = probe_lib.standardize(tr, te)
    return common.au_results(probe_lib.au_probe(a, ytr, b), yte, data.aus)["au_f1/mean"]

  def features(model_config, params):
    model = models.build(model_config)

    @jax.jit
    def f(x):
      x = models.normalize_images(x)
      (cls, z), state = model.apply(
        {"params": params}, x, method=lambda m, x: m.visual(x), capture_intermediates=True
      )
      tokens = state["intermediates"]["visual"]["transformer"]["__call__"][0][:, 1:]
      tokens = tokens.astype(jnp.float32)
      return {
        "z": z / jnp.linalg.norm(z, axis=-1, keepdims=True),
        "cls": cls,
        "patch_mean": tokens.mean(1),
        "patch_map": tokens.reshape(tokens.shape[0], -1),
      }

    def run(x):
      parts = [jax.device_get(f(x[i : i + 256])) for i in range(0, len(x), 256)]
      return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return run(xtr), run(xte)

  rows = []
  mc = config.model
  mc.dtype = "float32"
  rows.append(("random init", features(mc, models.init(models.build(mc), jax.random.key(0)))))
  for spec in args.init:
    mc, params = pretrained.load(spec, dtype="float32", image_size=config.model.image_size)
    rows.append((spec, features(mc, params)))
  where = "part1 -> part2 (validation)" if args.validation else "fold 1 -> its test part"
  print(f"{len(xtr)} training frames, {len(xte)} scored frames, {where}; mean AU F1:")
  print(f"{'features':40s} {'z':>6s} {'cls':>6s} {'patch_mean':>10s} {'patch_map':>10s}")
  for name, (tr, te) in rows:
    cells = [score(tr[k], te[k]) for k in ("z", "cls", "patch_mean", "patch_map")]
    print(f"{name:40s} {cells[0]:6.3f} {cells[1]:6.3f} {cells[2]:10.3f} {cells[3]:10.3f}")
  raw = score(probe_lib.raw_pixels(list(xtr)), probe_lib.raw_pixels(list(xte)))
  present = common.au_results(np.ones_like(yte), yte, data.aus)["au_f1/mean"]
  print(
    f"raw pixels ({probe_lib.RAW_SIZE}x{probe_lib.RAW_SIZE} grey): {raw:.3f}; all present: {present:.3f}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
