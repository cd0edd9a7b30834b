"""Relevance heatmaps of a briefly trained tiny CLIP sit on the rendered AU's region.

Issue #7 item 4: on SynthFace, the heat of "lip corner puller" (AU12) should lie on the mouth
corners and that of "brow lowerer" (AU4) on the brows. We render canonical SynthFace faces
(random identities, no nuisance) showing AU12, AU4, both or neither, train the image tower of a
tiny CLIP (plain optax; text tower frozen) to score the two AU name prompts by
sigmoid(s · cos(f(x), g(prompt)) + b) with BCE, then compute `visualize.relevance_maps` for both
prompts on held-out identities and compare the share of relevance inside each AU's box of
`render.AU_REGIONS` with the box's share of the image area (what a uniform map would give).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clef_jax import models
from clef_jax import tokenizer as tok_lib
from clef_jax import visualize
from input_pipeline import synthface
from input_pipeline.synthface import render

SIZE = 48  # 6 × 6 patches of 8 px
PATCH = 8
CONTEXT = 48
AUS = (12, 4)  # prompt order: AU12 (lip corner puller), AU4 (brow lowerer)
COMBOS = ((), (12,), (4,), (12, 4))
TRAIN_IDS = 128  # × 4 combos = 512 training faces (~2 s to render)
TEST_IDS = 4  # held-out identities per AU (other seed)
STEPS = 300
IDS_PER_BATCH = 8  # a batch holds all 4 AU combos of 8 identities: [32, S, S, 3]
IG_STEPS = 4
MIN_VAL_ACC = 0.8  # per AU, 8 held-out identities × 4 combos (measured 0.97, 1.00)
# Share of relevance inside the AU's box / the box's share of the image area. Measured with
# these seeds: trained 3.36 (AU12), 2.34 (AU4); untrained 0.87, 0.86. 1.75 leaves a 25 % margin
# below the weaker trained AU and twice the untrained value.
MIN_RATIO = 1.75


def _render(
  seed: int, n_ids: int, combos, intensity: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Canonical faces, identity-major: (`[n_ids·C, S, S, 3] uint8`, `[n_ids·C, 2] float32`).

  Each identity is drawn once and rendered with every combo of AUs (C = len(combos));
  intensity `None` draws U(2.5, 5) per face and AU. Labels: 0/1 for AU12, AU4 (`AUS`).
  """
  rng = np.random.default_rng(seed)
  images, labels = [], []
  for i in range(n_ids):
    ident = render.sample_identity(rng, "F" if i % 2 else "M")
    for combo in combos:
      aus = {au: (float(rng.uniform(2.5, 5.0)) if intensity is None else intensity) for au in combo}
      images.append(synthface.render_face(ident, aus, SIZE))
      labels.append([float(au in combo) for au in AUS])
  return np.stack(images), np.asarray(labels, np.float32)


def _model_and_tokens():
  mc = models.model_config(
    "tiny",
    image_size=SIZE,
    patch_size=PATCH,
    vocab_size=4096,
    eos_token_id=4095,
    context_length=CONTEXT,
  )
  model = models.build(mc)
  tok = tok_lib.get("embedded", context_length=CONTEXT)
  tokens = visualize.prompt_tokens(tok, visualize.label_prompts("au", list(AUS), ["names"]))
  init = jax.jit(
    lambda k: model.init(k, jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, CONTEXT), jnp.int32))[
      "params"
    ]
  )
  return model, init(jax.random.key(0)), tokens


def _train(model, params, tokens, images, labels, steps: int, val_images, val_labels):
  """Adam on BCE(s · cos(f(x), g(prompt_j)) + b_j) → trained CLIP params.

  The prompt embeddings g are computed once (the text tower stays at its init: two distinct
  directions, cos 0.47; training it too let both prompts collapse onto one direction), so only
  the image tower learns. Batches hold every AU combo of the same identities, which makes the
  AU, not the identity, the thing to learn; with shuffled batches and s = 10 at the start the
  tower collapsed to chance within these few steps. The recipe is seed-sensitive: with other
  seeds (init key 5, batch rng 7, data seed 3) 300-500 steps learned AU4 but not AU12, which
  the held-out accuracy check below reports as such.
  """
  zt = visualize.text_embeddings(model, params, tokens)  # [2, D] unit, fixed
  variables = {"clip": params, "s": jnp.zeros(()), "b": jnp.zeros((len(AUS),))}
  opt = optax.adam(1e-3)
  state = opt.init(variables)

  def loss_fn(v, x, y):
    zi = model.apply({"params": v["clip"]}, models.normalize_images(x), method="encode_image")
    logits = jnp.exp(v["s"]) * zi @ zt.T + v["b"]
    return optax.sigmoid_binary_cross_entropy(logits, y).mean(), logits

  @jax.jit
  def step(v, s, x, y):
    (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(v, x, y)
    upd, s = opt.update(g, s, v)
    return optax.apply_updates(v, upd), s, loss, jnp.mean((logits > 0) == (y > 0.5))

  rng = np.random.default_rng(1)
  n_ids = len(images) // len(COMBOS)
  for _ in range(steps):
    ids = rng.choice(n_ids, IDS_PER_BATCH, replace=False)
    idx = (ids[:, None] * len(COMBOS) + np.arange(len(COMBOS))).ravel()
    variables, state, loss, acc = step(
      variables, state, jnp.asarray(images[idx]), jnp.asarray(labels[idx])
    )
  logits = jax.jit(loss_fn)(variables, jnp.asarray(val_images), jnp.asarray(val_labels))[1]
  val_acc = np.mean((np.asarray(logits) > 0) == (val_labels > 0.5), axis=0)  # [2]
  # A failed training run is not a relevance finding: say so plainly.
  assert (val_acc >= MIN_VAL_ACC).all(), (
    f"training did not learn both AUs: held-out accuracy AU12 {val_acc[0]:.2f}, "
    f"AU4 {val_acc[1]:.2f} (need {MIN_VAL_ACC}; last batch {float(acc):.2f})"
  )
  return variables["clip"]


def _shares(model, params, tokens, faces):
  """{(prompt AU, face AU, region AU): mean share}."""
  imgs = np.concatenate([faces[au] for au in AUS])
  maps = visualize.relevance_maps(model, params, imgs, tokens, steps=IG_STEPS, batch_size=len(imgs))
  maps = dict(zip(AUS, np.split(maps, len(AUS))))
  out = {}
  for face_au in AUS:
    for t, prompt_au in enumerate(AUS):
      for region_au in AUS:
        mask = visualize.region_mask(render.AU_REGIONS[region_au], SIZE, SIZE)
        out[(prompt_au, face_au, region_au)] = float(
          visualize.region_share(maps[face_au][:, t], mask).mean()
        )
  return out


def _failures(s: dict, area: dict) -> list[str]:
  """What is wrong with the localisation shown by `_shares` output `s` (empty: all good)."""
  out = []
  for au, other in (AUS, AUS[::-1]):
    ratio = s[(au, au, au)] / area[au]
    if ratio < MIN_RATIO:
      out.append(
        f"AU{au} prompt on AU{au} faces: {s[(au, au, au)]:.3f} of the relevance in "
        f"its box (area share {area[au]:.3f}), ratio {ratio:.2f} < {MIN_RATIO}"
      )
    if s[(au, au, au)] <= s[(other, au, au)]:
      out.append(
        f"AU{au} faces: the AU{au} prompt puts {s[(au, au, au)]:.3f} of its "
        f"relevance in the AU{au} box, not more than the AU{other} prompt "
        f"({s[(other, au, au)]:.3f})"
      )
  return out


@pytest.fixture(scope="module")
def trained():
  model, params0, tokens = _model_and_tokens()
  images, labels = _render(0, TRAIN_IDS, COMBOS)
  faces = {au: _render(100 + au, TEST_IDS, [(au,)], intensity=4.0)[0] for au in AUS}
  val_images, val_labels = _render(50, 8, COMBOS)
  params = _train(model, params0, tokens, images, labels, STEPS, val_images, val_labels)
  area = {au: float(visualize.region_mask(render.AU_REGIONS[au], SIZE, SIZE).mean()) for au in AUS}
  return model, params0, params, tokens, faces, area


def test_au_relevance_sits_on_the_au_region(trained):
  """Measured (this file's seeds): AU12 prompt 0.490 of its relevance in the AU12 box (area
  0.146, ratio 3.36) vs 0.376 for the AU4 prompt; AU4 prompt 0.345 in the AU4 box (area 0.148,
  ratio 2.34) vs 0.193 for the AU12 prompt."""
  model, _, params, tokens, faces, area = trained
  s = _shares(model, params, tokens, faces)
  assert not _failures(s, area), _failures(s, area)


def test_untrained_model_fails_the_same_check(trained):
  """The check can fail: at init the maps are spread (measured ratios 0.87 for AU12, 0.86 for
  AU4) and neither prompt prefers its own region (0.126 vs 0.131 in the mouth box, 0.128 vs
  0.135 in the brow box)."""
  model, params0, _, tokens, faces, area = trained
  s = _shares(model, params0, tokens, faces)
  failures = _failures(s, area)
  assert sum("ratio" in f for f in failures) == len(AUS), failures
