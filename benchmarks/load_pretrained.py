"""Times `pretrained.load('hf:DIR')` on a random CLIP ViT-B/16-shaped HF folder.

The folder (config.json + model.safetensors, written with numpy, no torch) has the exact
tensor names and shapes of openai/clip-vit-base-patch16.

  python benchmarks/load_pretrained.py [--dtype float32|float16] [--repeats 3] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import safetensors.numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clef_jax import pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position

# openai/clip-vit-base-patch16 architecture.
VISION = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  image_size=224,
  patch_size=16,
  hidden_act="quick_gelu",
)
TEXT = dict(
  vocab_size=49408,
  hidden_size=512,
  intermediate_size=2048,
  num_hidden_layers=12,
  num_attention_heads=8,
  max_position_embeddings=77,
  hidden_act="quick_gelu",
  eos_token_id=2,
)
PROJECTION_DIM = 512


def hf_state_shapes() -> dict[str, tuple[int, ...]]:
  """Tensor names and shapes of a transformers CLIPModel with VISION/TEXT."""
  shapes: dict[str, tuple[int, ...]] = {}

  def tower(prefix: str, cfg: dict) -> None:
    w, m = cfg["hidden_size"], cfg["intermediate_size"]
    for i in range(cfg["num_hidden_layers"]):
      layer = f"{prefix}.encoder.layers.{i}"
      for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes[f"{layer}.self_attn.{n}.weight"] = (w, w)
        shapes[f"{layer}.self_attn.{n}.bias"] = (w,)
      for n in ("layer_norm1", "layer_norm2"):
        shapes[f"{layer}.{n}.weight"] = shapes[f"{layer}.{n}.bias"] = (w,)
      shapes[f"{layer}.mlp.fc1.weight"], shapes[f"{layer}.mlp.fc1.bias"] = (m, w), (m,)
      shapes[f"{layer}.mlp.fc2.weight"], shapes[f"{layer}.mlp.fc2.bias"] = (w, m), (w,)

  v, t = VISION, TEXT
  grid = v["image_size"] // v["patch_size"]
  shapes["vision_model.embeddings.class_embedding"] = (v["hidden_size"],)
  shapes["vision_model.embeddings.patch_embedding.weight"] = (
    v["hidden_size"],
    3,
    v["patch_size"],
    v["patch_size"],
  )
  shapes["vision_model.embeddings.position_embedding.weight"] = (grid * grid + 1, v["hidden_size"])
  for n in ("pre_layrnorm", "post_layernorm"):
    shapes[f"vision_model.{n}.weight"] = shapes[f"vision_model.{n}.bias"] = (v["hidden_size"],)
  tower("vision_model", v)
  shapes["text_model.embeddings.token_embedding.weight"] = (t["vocab_size"], t["hidden_size"])
  shapes["text_model.embeddings.position_embedding.weight"] = (
    t["max_position_embeddings"],
    t["hidden_size"],
  )
  shapes["text_model.final_layer_norm.weight"] = (t["hidden_size"],)
  shapes["text_model.final_layer_norm.bias"] = (t["hidden_size"],)
  tower("text_model", t)
  shapes["visual_projection.weight"] = (PROJECTION_DIM, v["hidden_size"])
  shapes["text_projection.weight"] = (PROJECTION_DIM, t["hidden_size"])
  shapes["logit_scale"] = ()
  return shapes


def write_folder(path: str, dtype: str) -> int:
  """Writes config.json + model.safetensors; returns the parameter count."""
  rng = np.random.default_rng(0)
  state = {
    k: np.asarray(0.02 * rng.standard_normal(s, np.float32), dtype)
    for k, s in hf_state_shapes().items()
  }
  safetensors.numpy.save_file(state, os.path.join(path, "model.safetensors"))
  config = dict(
    architectures=["CLIPModel"],
    model_type="clip",
    projection_dim=PROJECTION_DIM,
    logit_scale_init_value=2.6592,
    text_config=TEXT,
    vision_config=VISION,
  )
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return sum(x.size for x in state.values())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dir", default=None, help="folder to write (default: tmp)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    path = args.dir or tmp
    os.makedirs(path, exist_ok=True)
    t0 = time.perf_counter()
    count = write_folder(path, args.dtype)
    size = os.path.getsize(os.path.join(path, "model.safetensors"))
    print(
      f"wrote B/16-shaped HF folder: {count:,} params, {size / 2**20:.0f} MiB "
      f"{args.dtype}, {time.perf_counter() - t0:.2f}s"
    )
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      config, _ = pretrained.load(f"hf:{path}")
      times.append(time.perf_counter() - t0)
    print(
      f"pretrained.load: variant={config.variant} "
      f"first {times[0]:.2f}s, best {min(times):.2f}s over {len(times)} runs"
    )


if __name__ == "__main__":
  main()
