"""Tests of clef_jax.visualize: purity, t-SNE, blur, integrated gradients, localisation, CLI."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clef_jax import models
from clef_jax import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------
# Embedding statistics.
# ------------------------------------------------------------------------------------------


def test_label_purity_hand_computed():
  # Points on a line; k=2 neighbours (hand-computed in the comments), self excluded.
  z = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
  labels = ["a", "a", "b", "b", "b", "a"]
  # 0:{1,2}->a,b 1/2 | 1:{0,2} 1/2 | 2:{1,0}->a,a 0 | 3:{4,5}->b,a 1/2 | 4:{3,5} 1/2 | 5:{4,3} 0
  assert visualize.label_purity(z, labels, k=2) == pytest.approx(2 / 6)
  assert visualize.label_purity(z, [0, 0, 0, 1, 1, 1], k=2) == pytest.approx(1.0)
  assert visualize.purity_chance(labels) == pytest.approx((3 * 2 + 3 * 2) / (6 * 5))
  with pytest.raises(ValueError, match="k=6"):
    visualize.label_purity(z, labels, k=6)


def test_purity_with_duplicate_points_excludes_self():
  z = np.zeros((4, 2))  # all neighbours tie; each point must still not count itself
  assert visualize.label_purity(z, [0, 0, 1, 1], k=3) == pytest.approx(1 / 3)


def test_tsne_shape_and_clusters():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 16)) * 5
  labels = np.repeat(np.arange(3), 20)
  z = centres[labels] + rng.normal(size=(60, 16)) * 0.3
  xy = visualize.tsne_2d(z, seed=0)
  assert xy.shape == (60, 2) and xy.dtype == np.float32
  # Well-separated clusters stay separated in the map.
  assert visualize.label_purity(xy, labels, k=5) == 1.0
  small = visualize.tsne_2d(z[:7])  # perplexity capped below N
  assert small.shape == (7, 2)


def test_behaviour_labels_fallbacks():
  table = {"expression": np.array([1, 0, -1]), "task": np.array(["T1", "T2", "T3"])}
  assert visualize.behaviour_labels(table, [])[0] == "expression"
  table["expression"] = np.array([-1, -1, 0])
  kind, labels = visualize.behaviour_labels(table, [])
  assert kind == "activity" and list(labels) == ["T1", "T2", "T3"]
  au = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, -1]])
  kind, labels = visualize.behaviour_labels({"au": au}, [1, 4, 12])
  # AU4 is active in 3 images, AU1 in 2: images with both are labelled AU4.
  assert kind == "most frequent AU"
  assert list(labels) == ["AU4", "AU1", "AU4", "AU4", "none"]


# ------------------------------------------------------------------------------------------
# Relevance: blur, integrated gradients, localisation.
# ------------------------------------------------------------------------------------------


def _blur_reference(x: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian (radius round(4 sigma), half-sample symmetric borders) by numpy."""
  if sigma <= 0:
    return x
  r = int(4 * sigma + 0.5)
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k /= k.sum()
  for axis in (-2, -1):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x.astype(np.float64), pad, mode="symmetric")
    n = x.shape[axis]
    x = sum(w * np.take(xp, np.arange(d, d + n), axis=axis) for d, w in enumerate(k))
  return x


@pytest.mark.parametrize("sigma", [0.0, 0.7, 1.5, 3.0])
def test_gaussian_blur_matches_a_numpy_formula(sigma):
  # sigma 3 has a radius (12) beyond the 7-px side: borders reflect more than once.
  x = np.random.default_rng(1).random((2, 3, 9, 7)).astype(np.float32)
  got = visualize.gaussian_blur(jnp.asarray(x), sigma)
  assert got.dtype == np.float32 and got.shape == x.shape
  np.testing.assert_allclose(got, _blur_reference(x, sigma), atol=1e-5)


def _tiny_clip(image_size=16, patch_size=4):
  mc = models.model_config(
    "tiny",
    image_size=image_size,
    patch_size=patch_size,
    vocab_size=64,
    eos_token_id=63,
    context_length=8,
  )
  model = models.build(mc)
  params = model.init(
    jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), jnp.zeros((1, 8), jnp.int32)
  )["params"]
  return model, params


def _tokens(t, length=8):
  rng = np.random.default_rng(t)
  toks = rng.integers(1, 62, size=(t, length)).astype(np.int32)
  toks[:, -1] = 63
  return toks


def _cos(model, params, images_uint8, tokens):
  x = models.normalize_images(jnp.asarray(images_uint8))
  zi = model.apply({"params": params}, x, method="encode_image")
  zt = visualize.text_embeddings(model, params, tokens)
  zi = zi / jnp.linalg.norm(zi, axis=-1, keepdims=True)
  return np.asarray(zi @ zt.T)


def test_integrated_gradients_completeness_on_vit():
  """Attributions sum to cos(x) - cos(baseline): an identity independent of the implementation."""
  model, params = _tiny_clip()
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)
  tokens = _tokens(3)
  attr = visualize.integrated_gradients(model, params, images, tokens, steps=32, batch_size=2)
  assert attr.shape == (2, 3, 16, 16) and attr.dtype == np.float32
  # The baseline is the CLIP mean colour (0 after normalisation).
  x = models.normalize_images(jnp.asarray(images))
  zi = model.apply({"params": params}, x, method="encode_image")
  z0 = model.apply({"params": params}, jnp.zeros_like(x), method="encode_image")
  zt = visualize.text_embeddings(model, params, tokens)
  unit = lambda z: z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  want = np.asarray(unit(zi) @ zt.T - unit(z0) @ zt.T)
  got = attr.sum((-2, -1))
  np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())


class TwoRegion(nn.Module):
  """Image embedding [f_a, f_b, c] (cosine normalises it) with f_r = Σ w ⊙ x over region r; text = one-hot.

  Prompt token 1 reads axis a, token 2 axis b: each prompt's similarity depends (up to the
  small coupling through the norm) on its own region only.
  """

  box_a: tuple[float, float, float, float]
  box_b: tuple[float, float, float, float]
  shape: tuple[int, int]
  c: float = 10.0

  def setup(self):
    self.w = self.param("w", nn.initializers.normal(0.05), (*self.shape, 3))

  def encode_image(self, images):
    ma = visualize.region_mask([self.box_a], *self.shape)[..., None]
    mb = visualize.region_mask([self.box_b], *self.shape)[..., None]
    fa = jnp.sum(images * self.w * ma, axis=(1, 2, 3))
    fb = jnp.sum(images * self.w * mb, axis=(1, 2, 3))
    return jnp.stack([fa, fb, jnp.full_like(fa, self.c)], -1)

  def encode_text(self, tokens):
    return jax.nn.one_hot(tokens[:, 0] - 1, 3) + 0.0 * self.w.sum()


H, W = 12, 16
BOX_A = (0.0, 0.0, 0.5, 0.34)  # top-left, wide
BOX_B = (0.6, 0.5, 1.0, 1.0)  # bottom-right, tall


def _two_region():
  ma = visualize.region_mask([BOX_A], H, W).astype(np.float32)
  mb = visualize.region_mask([BOX_B], H, W).astype(np.float32)
  model = TwoRegion(BOX_A, BOX_B, (H, W))
  params = model.init(jax.random.key(3), jnp.zeros((1, H, W, 3)), method="encode_image")
  return model, params["params"], ma, mb


def test_one_step_attribution_matches_numpy_formula():
  model, params, ma, mb = _two_region()
  images = np.random.default_rng(2).integers(0, 256, (3, H, W, 3), np.uint8)
  tokens = np.array([[1, 0, 0, 0], [2, 0, 0, 0]], np.int32)
  attr = visualize.integrated_gradients(model, params, images, tokens, steps=1)
  x = (images / 255.0 - np.asarray(models.CLIP_MEAN)) / np.asarray(models.CLIP_STD)
  w = np.asarray(params["w"], np.float64)
  # One midpoint step: the gradient at x/2 (the baseline is 0) times x.
  fa = (x / 2 * w * ma[..., None]).sum((1, 2, 3))
  fb = (x / 2 * w * mb[..., None]).sum((1, 2, 3))
  n = np.sqrt(fa**2 + fb**2 + 100.0)[:, None, None, None]
  fa, fb = fa[:, None, None, None], fb[:, None, None, None]
  # d/dx [fa/n] and d/dx [fb/n], times x, summed over channels.
  da = w * ma[..., None] * (1 / n - fa**2 / n**3) - w * mb[..., None] * fa * fb / n**3
  db = w * mb[..., None] * (1 / n - fb**2 / n**3) - w * ma[..., None] * fa * fb / n**3
  want = np.stack([(da * x).sum(-1), (db * x).sum(-1)], 1)
  np.testing.assert_allclose(attr, want, rtol=1e-4, atol=1e-6)


def test_relevance_is_prompt_specific_and_localised():
  model, params, ma, mb = _two_region()
  images = np.random.default_rng(4).integers(0, 256, (5, H, W, 3), np.uint8)
  # [T, K, L]: prompt ensemble of identical templates = the single prompt.
  tokens = np.array([[[1, 0, 0, 0]] * 2, [[2, 0, 0, 0]] * 2], np.int32)
  maps = visualize.relevance_maps(model, params, images, tokens, steps=8, sigma=0.7, batch_size=2)
  assert maps.shape == (5, 2, H, W) and maps.dtype == np.float32
  assert (maps >= 0).all()
  np.testing.assert_allclose(maps.sum((-2, -1)), 1.0, rtol=1e-5)
  share_a = visualize.region_share(maps, ma > 0)
  share_b = visualize.region_share(maps, mb > 0)
  # Region areas are 24 % and 25 % of the image; the smoothing leaks a little over the border.
  assert share_a[:, 0].min() > 0.85 and share_b[:, 1].min() > 0.85, (share_a, share_b)
  assert share_b[:, 0].max() < 0.05 and share_a[:, 1].max() < 0.05


def test_vit_relevance_stays_where_the_image_differs_from_the_baseline():
  """A real (random) ViT, images equal to the baseline colour except in one box per image."""
  model, params = _tiny_clip(image_size=16, patch_size=4)
  rng = np.random.default_rng(5)
  mean = np.rint(np.asarray(models.CLIP_MEAN) * 255).astype(np.uint8)
  images = np.broadcast_to(mean, (2, 16, 16, 3)).copy()
  boxes = [(0.0, 0.0, 0.75, 0.25), (0.5, 0.25, 1.0, 1.0)]
  masks = [visualize.region_mask([b], 16, 16) for b in boxes]
  for i, m in enumerate(masks):
    images[i][m] = rng.integers(0, 256, (m.sum(), 3))
  maps = visualize.relevance_maps(model, params, images, _tokens(3), steps=8, sigma=0.0)
  for i, m in enumerate(masks):
    share = visualize.region_share(maps[i], m)
    assert share.min() > 0.95, (i, share, m.mean())


def test_region_mask_and_share():
  m = visualize.region_mask([(0.0, 0.0, 0.5, 0.5)], 4, 6)
  assert m.sum() == 2 * 3 and m[:2, :3].all()
  maps = np.zeros((1, 4, 6))
  maps[0, 0, 0], maps[0, 3, 5] = 3.0, 1.0
  np.testing.assert_allclose(visualize.region_share(maps, m), [0.75])


def test_relevance_rejects_bad_inputs():
  model, params = _tiny_clip()
  with pytest.raises(ValueError, match="uint8"):
    visualize.relevance_maps(model, params, np.zeros((1, 16, 16, 3), np.float32), _tokens(1))
  with pytest.raises(ValueError, match="tokens"):
    visualize.relevance_maps(
      model, params, np.zeros((1, 16, 16, 3), np.uint8), np.zeros((4,), np.int32)
    )
  with pytest.raises(ValueError, match="texts"):
    visualize.label_prompts("au", [12], ["names", "nicknames"])


def test_label_prompts_use_the_prompt_data():
  plist = visualize.label_prompts("au", [12, 4], ["names", "descriptions"])
  assert [(p[0], p[1]) for p in plist] == [
    ("AU12", "names"),
    ("AU12", "descriptions"),
    ("AU4", "names"),
    ("AU4", "descriptions"),
  ]
  assert plist[0][3] == ["a photo of a person with lip corner puller."]
  assert plist[2][2] == "brow lowerer"
  assert len(plist[1][3]) > 1  # descriptions: every description template


# ------------------------------------------------------------------------------------------
# The command line on a tiny workdir.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  """A workdir as the trainer writes it (config.json + orbax params), on tiny SynthFace.

  The params are the model's initialisation saved with the trainer's own Checkpointer; training
  them would only cost time here (the figures do not depend on the weights being trained).
  """
  from clef_jax import checkpoint as ckpt_lib
  from clef_jax import writers
  from configs import pretrain

  root = tmp_path_factory.mktemp("vis")
  config = pretrain.get_config("tiny")
  config.data.data_dir = str(root / "data")
  workdir = root / "run"
  workdir.mkdir()
  writers.write_config(str(workdir), config)
  model = models.build(config.model)
  size = config.model.image_size
  params = model.init(
    jax.random.key(0),
    jnp.zeros((1, size, size, 3)),
    jnp.zeros((1, config.model.context_length), jnp.int32),
  )["params"]
  ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), every_steps=1, async_save=False)
  ckpt.save(1, {"params": params, "step": jnp.ones((), jnp.int32)}, force=True)
  ckpt.close()
  return str(workdir), str(root)


def _run_cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "clef_jax.visualize", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


@pytest.mark.slow
def test_cli_embeddings_and_relevance(tiny_workdir):
  workdir, root = tiny_workdir
  out = os.path.join(root, "emb.png")
  r = _run_cli("embeddings", f"--workdir={workdir}", f"--out={out}", "--max=40")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "purity" in r.stdout
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.splitext(out)[0] + ".json", encoding="utf-8") as f:
    report = json.load(f)
  assert report[0]["n"] == 40 and report[0]["behaviour_kind"] == "expression"
  assert 0.0 <= report[0]["subject/purity"] <= 1.0

  rdir = os.path.join(root, "rel")
  r = _run_cli(
    "relevance", f"--workdir={workdir}", f"--out={rdir}", "--images=2", "--steps=2", "--texts=names"
  )
  assert r.returncode == 0, r.stderr[-3000:]
  for name in ("relevance_grid.png", "AU12.png", "AU4.png", "relevance.npz"):
    assert os.path.isfile(os.path.join(rdir, name)), os.listdir(rdir)
  saved = np.load(os.path.join(rdir, "relevance.npz"))
  assert saved["maps"].shape == (2, 12, 32, 32)
  np.testing.assert_allclose(saved["maps"].sum((-2, -1)), 1.0, rtol=1e-4)

  r = _run_cli("relevance", f"--workdir={workdir}", f"--out={rdir}", "--images=/no/such.png")
  assert r.returncode != 0 and "/no/such.png" in r.stderr


def test_load_run_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    visualize.load_run(str(tmp_path))
