"""The foundation model (stage 0): the shipped SynthFace CLIP folder, its build command, captions."""

import dataclasses
import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from clef_jax import datasets as data_lib
from clef_jax import models
from clef_jax import pretrained
from clef_jax import tokenizer as tokenizer_lib
from clef_jax.evaluators import common as ev_common
from configs import foundation
from configs import pretrain
from input_pipeline.readers import common as readers_common
from input_pipeline.synthface import render

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = ROOT / foundation.FOUNDATION_DIR


def _faces(size: int, n: int = 4) -> np.ndarray:
  rng = np.random.default_rng(0)
  aus = np.zeros(len(render.AUS))
  faces = []
  for k in range(n):
    a = aus.copy()
    a[render.AU_INDEX[12]] = 4.0 * (k % 2)
    faces.append(render.render_face(render.sample_identity(rng, "FM"[k % 2]), a, size))
  return np.stack(faces)


def test_shipped_folder_is_what_transformers_and_we_load_alike():
  """transformers.CLIPModel and pretrained.load('hf:...') give the same embeddings (fp32)."""
  config, params = pretrained.load(f"hf:{SHIPPED}", dtype="float32")
  model = models.build(config)
  tok = tokenizer_lib.get(f"hf:{SHIPPED}", config.context_length)
  images = _faces(config.image_size)
  texts = [t for row in ev_common.class_texts(["happiness", "anger"], "both")[0] for t in row]
  texts += ["a photo of a smiling woman with long hair", "portrait of a man, glasses"]
  tokens = tok(texts)
  pixels = np.array(models.normalize_images(images))  # writable: torch.from_numpy below
  zimg = np.asarray(model.apply({"params": params}, pixels, method="encode_image"))
  ztxt = np.asarray(model.apply({"params": params}, tokens, method="encode_text"))

  hf = transformers.CLIPModel.from_pretrained(str(SHIPPED), dtype=torch.float32).eval()
  hf_tok = transformers.CLIPTokenizerFast.from_pretrained(str(SHIPPED))
  ids = hf_tok(texts, padding="max_length", max_length=config.context_length, truncation=True)
  np.testing.assert_array_equal(np.asarray(ids["input_ids"]), tokens)
  with torch.no_grad():
    img = hf.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    txt = hf.get_text_features(input_ids=torch.from_numpy(tokens).long())
  unit = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()
  np.testing.assert_allclose(unit(img.pooler_output), zimg, atol=1e-4)
  np.testing.assert_allclose(unit(txt.pooler_output), ztxt, atol=1e-4)
  # The card says where it came from.
  info = json.loads((SHIPPED / "build_info.json").read_text())
  assert info["build_command"].startswith("python tools/build_foundation.py")
  assert info["commit"] and info["data"]["seed"] == 0 and info["weights_dtype"] == "bfloat16"
  size = sum(p.stat().st_size for p in SHIPPED.iterdir())
  assert size < 16 * 2**20, f"the shipped folder grew to {size / 2**20:.1f} MiB"


def test_default_pretrain_starts_from_the_shipped_foundation():
  c = pretrain.get_config()
  assert c.init == f"hf:{SHIPPED}" and c.tokenizer == str(SHIPPED)
  assert pretrain.get_config("init=none").init == ""
  assert pretrain.get_config("tiny").init == ""  # tests build their own small models
  mc, _ = pretrained.load(c.init)
  tok = tokenizer_lib.get(c.tokenizer, mc.context_length)
  assert tok.vocab_size <= mc.vocab_size and tok.eot_token_id == mc.eos_token_id


def test_quick_rebuild_end_to_end(tmp_path):
  """`tools/build_foundation.py --quick` builds a folder both loaders read, with its card."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: faster here
  out, work, data = tmp_path / "out", tmp_path / "work", tmp_path / "data"
  cmd = [sys.executable, str(ROOT / "tools" / "build_foundation.py"), "--quick"]
  cmd += [f"--out={out}", f"--workdir={work}", f"--data_dir={data}", "--dtype=float32"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert (
    "[4/4] wrote" in proc.stdout
    and "largest weight change from the float32 cast 0.00e+00" in proc.stdout
  )
  for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "README.md"):
    assert (out / name).is_file(), name
  info = json.loads((out / "build_info.json").read_text())
  for key in ("expr_names/fer/accuracy", "au_probe/au_f1/mean"):
    assert 0.0 <= info["results"][key] <= 1.0
  assert "au_probe/reference/raw_pixels/au_f1/mean" in info["results"]
  config, _ = pretrained.load(f"hf:{out}")
  assert config.vocab_size == foundation.VOCAB_SIZE and config.image_size == 32
  assert transformers.CLIPModel.from_pretrained(str(out)).config.projection_dim == config.embed_dim
  # A second build into the same folder is refused, and the folder is left as it was.
  before = (out / "model.safetensors").read_bytes()
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 2 and "not empty; pass --overwrite" in again.stderr
  assert (out / "model.safetensors").read_bytes() == before


def _example(i: int, caption: str) -> dict:
  ex = readers_common.make_example(image=np.zeros((8, 8, 3), np.uint8), path=f"img{i}.jpg")
  return {**ex, "caption": caption}


def test_captions_become_tokens_empty_ones_left_out_long_ones_counted(caplog):
  tok = tokenizer_lib.get("embedded", 12)
  captions = ["a smiling woman", "", "an angry man " * 8, "portrait, glasses", ""]
  source = [_example(i, c) for i, c in enumerate(captions)]
  table = {"subject": np.array([""] * 5), "caption": np.array(captions)}
  data = data_lib.Data(
    name="manifest",
    builder_config="x",
    data_dir="",
    info={},
    train_split="train",
    test_split="validation",
    train=source,
    test=source,
    train_table=table,
    subjects=[],
    tasks=[],
    activity_texts=[],
    aus=[],
    classes=[],
  )
  with caplog.at_level(logging.INFO):
    out = data_lib.with_caption_tokens(data, tok)
  assert len(out.train) == 3
  assert [ex["image/path"] for ex in (out.train[i] for i in range(3))] == [
    "img0.jpg",
    "img2.jpg",
    "img3.jpg",
  ]
  np.testing.assert_array_equal(out.train[1]["tokens"], tok(captions[2])[0])
  assert out.train[1]["tokens"][-1] == tok.eot_token_id  # truncated, still ends with EOT
  assert out.train_table["caption_truncated"].tolist() == [False, True, False]
  text = caplog.text
  assert "2 of 5 training examples have an empty caption" in text and "img1.jpg, img4.jpg" in text
  assert "1 of 3 are longer than the context (12 tokens)" in text and "img2.jpg (26 tokens)" in text
  with pytest.raises(ValueError, match="has no captions"):
    data_lib.with_caption_tokens(
      dataclasses.replace(data, train=source[1:2], train_table={"caption": np.array([""])}), tok
    )
