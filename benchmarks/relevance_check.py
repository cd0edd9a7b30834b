"""Does the relevance heat of an AU prompt sit on that AU's region? Prints the numbers.

  python benchmarks/relevance_check.py --workdir=W [--faces=16] [--aus=12,4,1,15,17] [--steps=16]

W is a run (ideally AU-fine-tuned on SynthFace). For every AU we render `--faces` canonical
SynthFace faces (random identities, no pose/lighting nuisance, only that AU at intensity 4, at
112 px, resized to the model's input like the eval pipeline does) and compute
`clef_jax.visualize.relevance_maps` for the AU's name prompt and description prompt (template
ensembles). We report the mean share of relevance inside the AU's box (`AU_REGIONS` of the
renderer) next to the box's share of the image area (what a map spread uniformly would give)
and their ratio. Run it on a randomly initialised model (--random) for the untrained reference.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from clef_jax import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
from clef_jax import models  # pylint: disable=g-import-not-at-top
from clef_jax import visualize  # pylint: disable=g-import-not-at-top
from input_pipeline import augment  # pylint: disable=g-import-not-at-top
from input_pipeline import synthface  # pylint: disable=g-import-not-at-top
from input_pipeline.synthface import render  # pylint: disable=g-import-not-at-top


def faces(au: int, n: int, size: int, seed: int) -> np.ndarray:
  """[n, size, size, 3] uint8 canonical faces showing only `au` (intensity 4)."""
  rng = np.random.default_rng([seed, au])
  out = []
  for i in range(n):
    ident = render.sample_identity(rng, "F" if i % 2 else "M")
    img = synthface.render_face(ident, {au: 4.0}, 112)
    out.append(augment.eval_image(img, size))
  return np.stack(out)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--faces", type=int, default=16)
  ap.add_argument("--aus", default="12,4,1,15,17")
  ap.add_argument("--steps", type=int, default=16)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--random", action="store_true", help="use the run's architecture, random init")
  args = ap.parse_args()
  config, model, params = visualize.load_run(args.workdir)
  size = config.model.image_size
  if args.random:
    params = models.init(model, jax.random.key(args.seed))
  tok = tok_lib.get(config.tokenizer, context_length=config.model.context_length)
  aus = [int(a) for a in args.aus.split(",") if a]
  unknown = [a for a in aus if a not in render.AU_REGIONS]
  if unknown:
    raise SystemExit(
      f"--aus: no rendered region for AU {unknown}; known: {sorted(render.AU_REGIONS)}"
    )
  sigma = visualize.default_sigma(size)
  print(
    f"run {args.workdir} ({'random init' if args.random else 'trained'}), {size}px, "
    f"{args.faces} faces per AU; "
    f"{visualize.RELEVANCE_METHOD.format(steps=args.steps, sigma=sigma)}"
  )
  print(f"{'AU':>5} {'prompt':>12} {'inside':>7} {'area':>6} {'ratio':>6}")
  t0 = time.time()
  rows = []
  for au in aus:
    mask = visualize.region_mask(render.AU_REGIONS[au], size, size)
    plist = visualize.label_prompts("au", [au], visualize.TEXT_KINDS)
    maps = visualize.relevance_maps(
      model,
      params,
      faces(au, args.faces, size, args.seed),
      visualize.prompt_tokens(tok, plist),
      steps=args.steps,
      sigma=sigma,
    )
    share = visualize.region_share(maps, mask).mean(0)  # [T]
    for (_, kind, _, _), s in zip(plist, share):
      rows.append((au, kind, s, mask.mean()))
      print(
        f"{'AU' + str(au):>5} {kind:>12} {s:7.3f} {mask.mean():6.3f} {s / mask.mean():6.2f}",
        flush=True,
      )
  mean_ratio = np.mean([s / a for _, _, s, a in rows])
  print(f"mean inside/area ratio {mean_ratio:.2f} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
  main()
