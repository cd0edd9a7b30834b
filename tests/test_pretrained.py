"""Pretrained import: our towers vs transformers' PyTorch CLIPModel on the same weights."""

import argparse
import contextlib
import functools
import json
import math
import re
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from clef_jax import models
from clef_jax import pretrained

TOL = 1e-4
VOCAB = 1000


def _hf_model(
  *,
  act="quick_gelu",
  image_size=32,
  patch_size=8,
  eos_token_id=2,
  vision_width=32,
  vision_heads=2,
  text_width=32,
  text_heads=2,
  projection_dim=24,
  seed=0,
):
  """A tiny random transformers CLIPModel (float32, eval mode)."""
  torch.manual_seed(seed)
  text = dict(
    vocab_size=VOCAB,
    hidden_size=text_width,
    intermediate_size=4 * text_width,
    num_hidden_layers=2,
    num_attention_heads=text_heads,
    max_position_embeddings=16,
    hidden_act=act,
    eos_token_id=eos_token_id,
    bos_token_id=0,
    pad_token_id=1,
  )
  vision = dict(
    hidden_size=vision_width,
    intermediate_size=4 * vision_width,
    num_hidden_layers=2,
    num_attention_heads=vision_heads,
    image_size=image_size,
    patch_size=patch_size,
    hidden_act=act,
  )
  config = transformers.CLIPConfig(
    text_config=text, vision_config=vision, projection_dim=projection_dim
  )
  model = transformers.CLIPModel(config).eval()
  # Random (not default-init) LayerNorms, biases and scale so every mapping matters.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
    model.logit_scale.fill_(math.log(20.0))
  return model


def _inputs(image_size, pooling_eos, seed=1):
  """Random images [B, S, S, 3] and tokens [N, 16] with an EOT per row.

  eos_token_id == 2 ('argmax'): EOT is VOCAB-1, zeros after it.
  Otherwise EOT is `pooling_eos` and large ids follow it, so argmax != first eos.
  """
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(3, image_size, image_size, 3)).astype(np.float32)
  tokens = rng.integers(10, VOCAB - 1, size=(4, 16)).astype(np.int32)
  for row, end in enumerate((3, 7, 15, 10)):
    if pooling_eos == 2:
      tokens[row, end] = VOCAB - 1
      tokens[row, end + 1 :] = 0
    else:
      tokens[row, end] = pooling_eos
      tokens[row, end + 1 :] = VOCAB - 1  # larger than everything: argmax would pick it
  return images, tokens


def _hf_outputs(model, images, tokens):
  with torch.no_grad():
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    ids = torch.from_numpy(tokens).long()
    img = model.get_image_features(pixel_values=pixels)
    txt = model.get_text_features(input_ids=ids)
    img, txt = img.pooler_output, txt.pooler_output  # transformers 5: ModelOutput
    out = model(input_ids=ids, pixel_values=pixels)
    feats = model.vision_model(pixel_values=pixels).pooler_output
  norm = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()
  return dict(
    zimg=norm(img), ztxt=norm(txt), logits=out.logits_per_image.numpy(), features=feats.numpy()
  )


@functools.lru_cache(maxsize=None)
def _forward(config_json):
  """Jitted (zimg, ztxt, logits, features) of a model config (cached per config)."""
  model = models.build(ml_collections.ConfigDict(json.loads(config_json)))

  @jax.jit
  def run(params, images, tokens):
    variables = {"params": params}
    zimg, ztxt, scale = model.apply(variables, images, tokens)
    features = model.apply(variables, images, method="image_features")
    return zimg, ztxt, scale * zimg @ ztxt.T, features

  return run


def _ours(config, params, images, tokens):
  zimg, ztxt, logits, features = _forward(config.to_json())(params, images, tokens)
  return dict(
    zimg=np.asarray(zimg),
    ztxt=np.asarray(ztxt),
    logits=np.asarray(logits),
    features=np.asarray(features),
    dtypes=(zimg.dtype, ztxt.dtype),
  )


def _assert_close(ours, ref):
  for key in ("zimg", "ztxt", "logits", "features"):
    np.testing.assert_allclose(ours[key], ref[key], atol=TOL, rtol=0, err_msg=key)


@pytest.mark.parametrize(
  "act,image_size,eos",
  [
    ("quick_gelu", 32, 2),  # legacy HF config: argmax pooling
    ("gelu", 48, 7),  # first-eos pooling, pads after eos are large ids
  ],
)
def test_hf_matches_transformers(tmp_path, act, image_size, eos):
  model = _hf_model(act=act, image_size=image_size, eos_token_id=eos)
  model.save_pretrained(tmp_path)
  assert (tmp_path / "model.safetensors").exists()
  config, params = pretrained.load(f"hf:{tmp_path}")
  assert config.act == act and config.image_size == image_size
  assert config.text_pooling == ("argmax" if eos == 2 else "eos_id")
  assert config.embed_dim == 24 and config.context_length == 16
  images, tokens = _inputs(image_size, eos)
  ours = _ours(config, params, images, tokens)
  assert ours["dtypes"] == (jnp.float32, jnp.float32)
  ref = _hf_outputs(model, images, tokens)
  _assert_close(ours, ref)
  if eos != 2:  # The inputs discriminate: argmax pooling would be far off.
    config.text_pooling = "argmax"
    wrong = _ours(config, params, images, tokens)["ztxt"]
    assert np.abs(wrong - ref["ztxt"]).max() > 1e-2


def _openai_state_dict(model):
  """OpenAI CLIP layout of a transformers CLIPModel (fused qkv, [in, out] projections)."""
  hf = {k: v.detach().clone() for k, v in model.state_dict().items()}
  sd = {
    "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
    "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
    "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
    "visual.proj": hf["visual_projection.weight"].T.contiguous(),
    "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
    "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
    "text_projection": hf["text_projection.weight"].T.contiguous(),
    "logit_scale": hf["logit_scale"],
  }
  for ours, theirs in (
    ("visual.ln_pre", "vision_model.pre_layrnorm"),
    ("visual.ln_post", "vision_model.post_layernorm"),
    ("ln_final", "text_model.final_layer_norm"),
  ):
    for p in ("weight", "bias"):
      sd[f"{ours}.{p}"] = hf[f"{theirs}.{p}"]
  for ours, theirs in (
    ("visual.transformer", "vision_model.encoder"),
    ("transformer", "text_model.encoder"),
  ):
    for i in range(2):
      o, t = f"{ours}.resblocks.{i}", f"{theirs}.layers.{i}"
      for p in ("weight", "bias"):
        sd[f"{o}.attn.in_proj_{p}"] = torch.cat(
          [hf[f"{t}.self_attn.{n}_proj.{p}"] for n in ("q", "k", "v")]
        )
        sd[f"{o}.attn.out_proj.{p}"] = hf[f"{t}.self_attn.out_proj.{p}"]
        sd[f"{o}.ln_1.{p}"] = hf[f"{t}.layer_norm1.{p}"]
        sd[f"{o}.ln_2.{p}"] = hf[f"{t}.layer_norm2.{p}"]
        sd[f"{o}.mlp.c_fc.{p}"] = hf[f"{t}.mlp.fc1.{p}"]
        sd[f"{o}.mlp.c_proj.{p}"] = hf[f"{t}.mlp.fc2.{p}"]
  return sd


def _torchscript(state_dict, path):
  """Saves `state_dict` as a TorchScript archive (module tree holding the tensors)."""
  root = torch.nn.Module()
  for key, value in state_dict.items():
    *parents, leaf = key.split(".")
    node = root
    for name in parents:
      if not hasattr(node, name):
        node.add_module(name, torch.nn.Module())
      node = getattr(node, name)
    node.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
  with warnings.catch_warnings():  # torch.jit is deprecated; OpenAI files use it.
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.jit.save(torch.jit.script(root), path)


@pytest.fixture(scope="module")
def openai_model():
  # Widths are multiples of 64 so OpenAI's heads = width // 64 rule holds.
  return _hf_model(
    vision_width=128, vision_heads=2, text_width=64, text_heads=1, projection_dim=48, seed=3
  )


@pytest.mark.parametrize("layout", ["plain", "state_dict_module", "torchscript"])
def test_openai_matches_transformers(tmp_path, openai_model, layout):
  sd = _openai_state_dict(openai_model)
  path = str(tmp_path / "clip.pt")
  if layout == "plain":
    torch.save(sd, path)
  elif layout == "state_dict_module":  # FaRL-like: {'state_dict': ...}, wrapper prefix
    torch.save(
      {
        "state_dict": {f"module.{k}": v for k, v in sd.items()},
        "epoch": 16,
        "args": argparse.Namespace(lr=1e-4),
      },
      path,
    )
  else:
    _torchscript(sd, path)
  expect_warning = layout == "state_dict_module"
  with (
    pytest.warns(UserWarning, match="fully unpickled")
    if expect_warning
    else contextlib.nullcontext()
  ):
    config, params = pretrained.load(f"openai:{path}")
  assert (config.vision_heads, config.text_heads) == (2, 1)
  assert config.text_pooling == "argmax"
  images, tokens = _inputs(32, 2)
  _assert_close(_ours(config, params, images, tokens), _hf_outputs(openai_model, images, tokens))


def test_openai_fp16_and_harmless_extras(tmp_path, openai_model):
  sd = {k: v.half() for k, v in _openai_state_dict(openai_model).items()}
  sd["input_resolution"] = torch.tensor(32)
  sd["mim_head.weight"] = torch.zeros(3)  # outside the CLIP namespaces
  torch.save(sd, tmp_path / "clip.pt")
  with pytest.warns(UserWarning, match="input_resolution.*mim_head.weight"):
    config, params = pretrained.load(f"openai:{tmp_path / 'clip.pt'}")
  leaves = jax.tree.leaves(params)
  assert all(x.dtype == np.float32 for x in leaves)
  ref = sd["visual.conv1.weight"].float().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(params["visual"]["conv1"]["kernel"], ref)


def test_openai_errors_name_keys(tmp_path, openai_model):
  sd = _openai_state_dict(openai_model)
  del sd["visual.transformer.resblocks.1.ln_2.bias"]
  sd["visual.transformer.resblocks.0.attn.extra"] = torch.zeros(2)
  torch.save(sd, tmp_path / "bad.pt")
  with pytest.raises(ValueError) as e:
    pretrained.load(f"openai:{tmp_path / 'bad.pt'}")
  assert "visual.transformer.resblocks.1.ln_2.bias" in str(e.value)
  assert "visual.transformer.resblocks.0.attn.extra" in str(e.value)
  with pytest.raises(FileNotFoundError, match="nope.pt"):
    pretrained.load(f"openai:{tmp_path / 'nope.pt'}")
  (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="garbage.pt: not a readable torch checkpoint"):
    pretrained.load(f"openai:{tmp_path / 'garbage.pt'}")


def test_hf_missing_key_and_extras(tmp_path):
  import safetensors.numpy

  model = _hf_model()
  model.save_pretrained(tmp_path)
  path = tmp_path / "model.safetensors"
  state = safetensors.numpy.load_file(path)
  state["text_model.embeddings.position_ids"] = np.arange(16)[None]
  safetensors.numpy.save_file(state, path)
  with pytest.warns(UserWarning, match="position_ids"):
    pretrained.load(f"hf:{tmp_path}")
  del state["text_model.encoder.layers.1.mlp.fc2.bias"]
  safetensors.numpy.save_file(state, path)
  with pytest.raises(ValueError, match=r"text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
    pretrained.load(f"hf:{tmp_path}")


def test_hf_bfloat16_weights_and_overrides(tmp_path):
  model = _hf_model().to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  config, params = pretrained.load(f"hf:{tmp_path}", dtype="bfloat16", remat=True)
  assert config.dtype == "bfloat16" and config.remat
  ref = model.text_projection.weight.float().detach().numpy().T
  np.testing.assert_array_equal(params["text"]["text_projection"], ref)


def test_hf_corrupt_safetensors_names_the_file(tmp_path):
  model = _hf_model()
  model.save_pretrained(tmp_path)
  path = tmp_path / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(b"\xff" * 8 + data[8:64])  # a header length beyond the file
  with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a readable safetensors"):
    pretrained.load(f"hf:{tmp_path}")
  path.write_bytes(data[: len(data) // 2])  # truncated: tensors not fully covered
  with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a readable safetensors"):
    pretrained.load(f"hf:{tmp_path}")


def test_load_at_other_image_size(tmp_path):
  model = _hf_model(image_size=32, patch_size=8)
  model.save_pretrained(tmp_path)
  config, params = pretrained.load(f"hf:{tmp_path}", image_size=48)
  assert config.image_size == 48
  posemb = params["visual"]["positional_embedding"]
  assert posemb.shape == (1 + 6 * 6, 32)
  ref = model.vision_model.embeddings.position_embedding.weight.detach().numpy()
  np.testing.assert_array_equal(posemb[0], ref[0])  # class token kept
  images, tokens = _inputs(48, 2)
  model = models.build(config)
  zimg = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))(params, images)
  assert zimg.shape == (3, 24)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=-1), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="multiple of the checkpoint patch size 8"):
    pretrained.load(f"hf:{tmp_path}", image_size=50)


def test_resample_posemb():
  rng = np.random.default_rng(0)
  const = np.concatenate([rng.normal(size=(1, 5)), np.full((16, 5), 0.25)]).astype(np.float32)
  out = pretrained.resample_posemb(const, 7)
  assert out.shape == (50, 5)
  np.testing.assert_array_equal(out[0], const[0])
  np.testing.assert_allclose(out[1:], 0.25, atol=1e-6)
  # Upsampling with bilinear == torch bilinear (align_corners=False).
  posemb = rng.normal(size=(1 + 9, 4)).astype(np.float32)
  grid = torch.from_numpy(posemb[1:].reshape(1, 3, 3, 4)).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(5, 5), mode="bilinear", align_corners=False)
  ref = ref.permute(0, 2, 3, 1).reshape(25, 4).numpy()
  out = pretrained.resample_posemb(posemb, 5, method="bilinear")
  np.testing.assert_allclose(out[1:], ref, atol=1e-5)
  with pytest.raises(ValueError, match="square grid"):
    pretrained.resample_posemb(np.zeros((11, 4)), 3)


def test_merge_params():
  init = {
    "visual": {"proj": np.zeros((4, 2)), "w": np.zeros(3)},
    "text": {"a": np.zeros(2)},
    "logit_scale": np.zeros(()),
  }
  loaded = {
    "visual": {"proj": np.ones((4, 3)), "w": np.ones(3)},
    "text": {"a": np.ones(2), "extra": np.ones(1)},
  }
  with pytest.raises(ValueError) as e:
    pretrained.merge_params(loaded, init)
  msg = str(e.value)
  assert "logit_scale" in msg and "text/extra" in msg and "visual/proj" in msg
  merged = pretrained.merge_params(
    loaded, init, dont_load=("visual/proj", "logit_scale", "text/extra")
  )
  np.testing.assert_array_equal(merged["visual"]["proj"], init["visual"]["proj"])
  np.testing.assert_array_equal(merged["visual"]["w"], 1.0)
  np.testing.assert_array_equal(merged["text"]["a"], 1.0)
  assert "extra" not in merged["text"]
  with pytest.warns(UserWarning, match="nothing/.*"):
    pretrained.merge_params(
      loaded, init, dont_load=("visual/proj", "logit_scale", "text/extra", "nothing/.*")
    )


def test_merge_params_keeps_empty_subtrees():
  # An objective without heads has `heads: {}`; it survives the merge whether or not the loaded
  # params carry it, and holds no parameter that could be missing or unexpected.
  init = {"visual": {"w": np.zeros(3)}, "heads": {}, "text": {"empty": {}, "a": np.zeros(2)}}
  for loaded in (
    {"visual": {"w": np.ones(3)}, "text": {"a": np.ones(2)}},
    {"visual": {"w": np.ones(3)}, "heads": {}, "text": {"a": np.ones(2), "empty": {}}},
  ):
    merged = pretrained.merge_params(loaded, init)
    assert merged["heads"] == {} and merged["text"]["empty"] == {}
    assert sorted(merged) == ["heads", "text", "visual"]
    np.testing.assert_array_equal(merged["visual"]["w"], 1.0)
  with pytest.raises(ValueError, match="heads/linear"):
    pretrained.merge_params(init, {**init, "heads": {"linear": np.zeros(2)}})


def test_spec_errors_and_register_loader(tmp_path):
  with pytest.raises(ValueError, match=r"'zzz'.*\['clef', 'hf', 'openai'"):
    pretrained.load("zzz:/x")
  with pytest.raises(ValueError, match="PREFIX:PATH"):
    pretrained.load("/just/a/path")
  with pytest.raises(FileNotFoundError, match="config.json"):
    pretrained.load(f"hf:{tmp_path}")
  (tmp_path / "config.json").write_text(json.dumps({}))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    pretrained.load(f"hf:{tmp_path}")
  (tmp_path / "config.json").write_text(json.dumps({"text_config": {"hidden_act": "relu"}}))
  with pytest.raises(ValueError, match="text_config.hidden_act='relu'"):
    pretrained.load(f"hf:{tmp_path}")
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(ValueError, match="config.json: invalid JSON"):
    pretrained.load(f"hf:{tmp_path}")

  def fake(path, **overrides):
    del path
    config = models.model_config("tiny", **overrides)
    shapes = jax.eval_shape(
      models.build(config).init,
      jax.random.key(0),
      jnp.zeros((1, 32, 32, 3)),
      jnp.zeros((1, 16), jnp.int32),
    )["params"]
    return config, jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)

  pretrained.register_loader("fake", fake)
  try:
    config, params = pretrained.load("fake:anything", image_size=40)
    assert config.image_size == 40
    assert params["visual"]["positional_embedding"].shape == (26, 32)
    with pytest.raises(ValueError, match="'bogus'"):
      pretrained.load("fake:anything", bogus=1)
  finally:
    del pretrained._LOADERS["fake"]
