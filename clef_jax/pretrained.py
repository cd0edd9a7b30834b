"""Import pretrained CLIP/FaRL weights into our parameter layout.

  model_config, params = pretrained.load('hf:/ckpt/clip-vit-base-patch16')
  model_config, params = pretrained.load('openai:/ckpt/FaRL-Base-Patch16-LAIONFace20M-ep64.pth')
  model_config, params = pretrained.load('openai:/ckpt/ViT-B-16.pt', image_size=112)

Specs are `PREFIX:PATH`; loaders live in `_LOADERS` ('hf', 'openai'; others via
`register_loader`). A loader is `fn(path: str, **overrides) -> (model_config, params)`:
it infers the architecture from the tensors' shapes, applies `overrides` (any
`variants.model_config` field, e.g. dtype='bfloat16', remat=True) and returns params as a
nested dict of float32 numpy arrays laid out as `clef_jax.models.CLIP` expects.

Conversions are tables of (our slash-joined name, source key, transform); every source
key must be consumed and every parameter filled, otherwise a ValueError names the keys.
Known harmless extras (buffers such as `position_ids`, `input_resolution`) and keys outside
the CLIP model's namespaces (e.g. training heads in a FaRL checkpoint) are ignored with a
warning that names them.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from clef_jax import models
from clef_jax.models import variants
from input_pipeline import paths

Params = dict[str, Any]  # nested dict of np.ndarray (float32)
Loader = Callable[..., tuple[ml_collections.ConfigDict, Params]]
_Transform = Callable[[np.ndarray], np.ndarray]

# Buffers some exporters store next to the weights; never parameters.
_HARMLESS = re.compile(
  r"(.*\.)?(position_ids|attn_mask)$|input_resolution$|context_length$|vocab_size$"
)
_ARCH_FIELDS = (
  "image_size",
  "patch_size",
  "vision_width",
  "vision_layers",
  "vision_heads",
  "mlp_ratio",
  "text_width",
  "text_layers",
  "text_heads",
  "vocab_size",
  "context_length",
  "embed_dim",
)


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #
def load(
  spec: str, *, image_size: int | None = None, **overrides: Any
) -> tuple[ml_collections.ConfigDict, Params]:
  """Loads pretrained weights named by `spec` ('hf:DIR', 'openai:FILE', ...).

  Args:
    spec: `PREFIX:PATH` with PREFIX one of `_LOADERS`.
    image_size: when given and different from the checkpoint's, the image
      positional embedding is resampled (bicubic) to the new patch grid.
    **overrides: model config fields to set (e.g. dtype='bfloat16', remat=True).

  Returns:
    (model_config, params): a `variants.model_config`-style ConfigDict and a nested
    dict of float32 numpy arrays whose tree and shapes match `models.build(config)`.
  """
  if not isinstance(spec, str) or ":" not in spec:
    raise ValueError(
      f"Pretrained spec {spec!r} must look like PREFIX:PATH with PREFIX one of {sorted(_LOADERS)}."
    )
  prefix, path = spec.split(":", 1)
  if prefix not in _LOADERS:
    raise ValueError(
      f"Unknown pretrained spec prefix {prefix!r} in {spec!r}; known prefixes: {sorted(_LOADERS)}."
    )
  if not path:
    raise ValueError(f"Pretrained spec {spec!r} has an empty path.")
  if "image_size" in overrides:
    raise ValueError(
      "Pass image_size as load(..., image_size=N), which also resamples the positional embedding."
    )
  config, params = _LOADERS[prefix](path, **overrides)
  if image_size is not None and image_size != config.image_size:
    if image_size % config.patch_size:
      raise ValueError(
        f"image_size={image_size} is not a multiple of the checkpoint patch size "
        f"{config.patch_size} ({spec})."
      )
    params["visual"]["positional_embedding"] = resample_posemb(
      params["visual"]["positional_embedding"], image_size // config.patch_size
    )
    config.image_size = image_size
  _check_against_model(params, config, what=spec)
  return config, params


def register_loader(prefix: str, fn: Loader) -> None:
  """Makes `load('PREFIX:PATH')` call `fn(PATH, **overrides)`."""
  if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", prefix):
    raise ValueError(f"Loader prefix {prefix!r} must be an identifier.")
  _LOADERS[prefix] = fn


def resample_posemb(posemb: np.ndarray, new_grid: int, method: str = "bicubic") -> np.ndarray:
  """Resizes a ViT positional embedding to a new square patch grid.

  Args:
    posemb: `[1 + g*g, W]` class-token row followed by the g×g grid (row-major).
    new_grid: target grid side n.
    method: `jax.image.resize` method ('bicubic', 'bilinear', ...).

  Returns:
    `[1 + n*n, W] float32`; the class-token row is kept as is.
  """
  posemb = np.asarray(posemb, np.float32)
  if posemb.ndim != 2:
    raise ValueError(f"resample_posemb expects [1 + g*g, W], got {posemb.shape}.")
  grid = math.isqrt(posemb.shape[0] - 1)
  if grid * grid != posemb.shape[0] - 1:
    raise ValueError(f"Positional embedding of {posemb.shape[0]} rows is not 1 + a square grid.")
  if new_grid <= 0:
    raise ValueError(f"new_grid must be positive, got {new_grid}.")
  if new_grid == grid:
    return posemb
  width = posemb.shape[1]
  tokens = posemb[1:].reshape(grid, grid, width)
  resized = jax.image.resize(jnp.asarray(tokens), (new_grid, new_grid, width), method)
  resized = np.asarray(resized, np.float32).reshape(new_grid * new_grid, width)
  return np.concatenate([posemb[:1], resized], axis=0)


def merge_params(loaded: Params, init: Params, dont_load: Iterable[str] = ()) -> Params:
  """Overlays loaded params on initialised ones (big_vision-style).

  Args:
    loaded: nested dict of arrays (e.g. from `load`).
    init: nested dict of arrays (or ShapeDtypeStructs) from `model.init`.
    dont_load: regexes (re.fullmatch on slash-joined names such as
      'visual/proj' or 'text/.*'); matching params keep their `init` value.

  Returns:
    A nested dict with `init`'s structure, empty subtrees (an objective without heads has
    `heads: {}`) included.

  Raises:
    ValueError naming every param missing from `loaded`, every unexpected loaded
    param, and every shape mismatch (among names not matched by dont_load).
  """
  patterns = [re.compile(p) for p in dont_load]
  skip = lambda name: any(p.fullmatch(name) for p in patterns)
  flat_loaded, flat_init = _flatten(loaded), _flatten(init)
  is_param = lambda v: v is not traverse_util.empty_node  # an empty subtree holds no param
  missing = [
    k for k, v in flat_init.items() if is_param(v) and k not in flat_loaded and not skip(k)
  ]
  unexpected = [
    k for k, v in flat_loaded.items() if is_param(v) and k not in flat_init and not skip(k)
  ]
  mismatched = [
    f"{k} (checkpoint {tuple(np.shape(flat_loaded[k]))} vs model {tuple(np.shape(v))})"
    for k, v in flat_init.items()
    if is_param(v)
    and k in flat_loaded
    and not skip(k)
    and tuple(np.shape(flat_loaded[k])) != tuple(np.shape(v))
  ]
  _raise_if_any("merge_params", missing, unexpected, mismatched)
  unused = [
    p.pattern for p in patterns if not any(p.fullmatch(k) for k in (*flat_init, *flat_loaded))
  ]
  if unused:
    warnings.warn(f"merge_params: dont_load pattern(s) {unused} matched no parameter.")
  merged = {k: (v if skip(k) or not is_param(v) else flat_loaded[k]) for k, v in flat_init.items()}
  return traverse_util.unflatten_dict(merged, sep="/")


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dict → {'a/b/c': leaf}; an empty subtree stays as traverse_util.empty_node."""
  return traverse_util.flatten_dict(dict(tree), sep="/", keep_empty_nodes=True)


# --------------------------------------------------------------------------- #
# Conversion tables
# --------------------------------------------------------------------------- #
class _Rule(collections.namedtuple("_Rule", "dst src fn inv", defaults=(None,))):
  """Our param `dst` = fn(state_dict[src]); `inv` maps it back (export), where one exists
  (None for a slice of a fused tensor; plain transforms are inverted by `inverse`)."""


def _identity(w: np.ndarray) -> np.ndarray:
  return w


def _transpose(w: np.ndarray) -> np.ndarray:
  return w.T


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  return w.transpose(2, 3, 1, 0)  # torch [O, I, kh, kw] → flax [kh, kw, I, O]


def _conv_kernel_inv(w: np.ndarray) -> np.ndarray:
  return w.transpose(3, 2, 0, 1)  # flax [kh, kw, I, O] → torch [O, I, kh, kw]


# Transforms that are their own rule's whole story: fn -> its inverse.
_PLAIN_INVERSES: dict[Any, _Transform] = {
  _identity: _identity,
  _transpose: _transpose,
  _conv_kernel: _conv_kernel_inv,
}


def inverse(rule: _Rule) -> _Transform | None:
  """The transform from our param back to the state-dict tensor, or None (not invertible)."""
  return rule.inv if rule.inv is not None else _PLAIN_INVERSES.get(rule.fn)


def _rows(w: np.ndarray, part: int) -> np.ndarray:
  """Part 0/1/2 (q/k/v) of a fused [3W, ...] in_proj tensor."""
  width = w.shape[0] // 3
  return w[part * width : (part + 1) * width]


def _qkv(heads: int, part: int | None = None) -> tuple[_Transform, _Transform]:
  """Transforms of a torch Linear (weight [W, W], bias [W]) into a flax
  DenseGeneral with heads (kernel [W, H, W/H], bias [H, W/H])."""
  pick = (lambda w: w) if part is None else (lambda w: _rows(w, part))
  kernel = lambda w: pick(w).T.reshape(w.shape[1], heads, -1)
  bias = lambda b: pick(b).reshape(heads, -1)
  return kernel, bias


def _out_kernel(heads: int) -> _Transform:
  return lambda w: w.T.reshape(heads, -1, w.shape[0])  # → [H, W/H, W]


def _ln_rules(dst: str, src: str) -> list[_Rule]:
  return [
    _Rule(f"{dst}/scale", f"{src}.weight", _identity),
    _Rule(f"{dst}/bias", f"{src}.bias", _identity),
  ]


def _dense_rules(dst: str, src: str) -> list[_Rule]:
  return [
    _Rule(f"{dst}/kernel", f"{src}.weight", _transpose),
    _Rule(f"{dst}/bias", f"{src}.bias", _identity),
  ]


def _block_rules(dst: str, src: str, heads: int, fmt: str) -> list[_Rule]:
  """Rules of one residual block; fmt 'hf' (split q/k/v) or 'openai' (fused)."""
  attn = f"{dst}/attn"
  if fmt == "hf":
    rules = _ln_rules(f"{dst}/ln_1", f"{src}.layer_norm1")
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      kernel, bias = _qkv(heads)
      rules += [
        _Rule(
          f"{attn}/{ours}/kernel",
          f"{src}.self_attn.{theirs}.weight",
          kernel,
          lambda k: k.reshape(k.shape[0], -1).T,  # [W, H, W/H] → [W_out, W_in]
        ),
        _Rule(
          f"{attn}/{ours}/bias", f"{src}.self_attn.{theirs}.bias", bias, lambda b: b.reshape(-1)
        ),
      ]
    rules += [
      _Rule(
        f"{attn}/out/kernel",
        f"{src}.self_attn.out_proj.weight",
        _out_kernel(heads),
        lambda k: k.reshape(-1, k.shape[-1]).T,  # [H, W/H, W] → [W_out, W_in]
      ),
      _Rule(f"{attn}/out/bias", f"{src}.self_attn.out_proj.bias", _identity),
    ]
    rules += _ln_rules(f"{dst}/ln_2", f"{src}.layer_norm2")
    rules += _dense_rules(f"{dst}/mlp/c_fc", f"{src}.mlp.fc1")
    rules += _dense_rules(f"{dst}/mlp/c_proj", f"{src}.mlp.fc2")
  else:
    rules = _ln_rules(f"{dst}/ln_1", f"{src}.ln_1")
    for part, ours in enumerate(("query", "key", "value")):
      kernel, bias = _qkv(heads, part)
      rules += [
        _Rule(f"{attn}/{ours}/kernel", f"{src}.attn.in_proj_weight", kernel),
        _Rule(f"{attn}/{ours}/bias", f"{src}.attn.in_proj_bias", bias),
      ]
    rules += [
      _Rule(f"{attn}/out/kernel", f"{src}.attn.out_proj.weight", _out_kernel(heads)),
      _Rule(f"{attn}/out/bias", f"{src}.attn.out_proj.bias", _identity),
    ]
    rules += _ln_rules(f"{dst}/ln_2", f"{src}.ln_2")
    rules += _dense_rules(f"{dst}/mlp/c_fc", f"{src}.mlp.c_fc")
    rules += _dense_rules(f"{dst}/mlp/c_proj", f"{src}.mlp.c_proj")
  return rules


def _hf_rules(config: ml_collections.ConfigDict) -> list[_Rule]:
  """transformers CLIPModel state dict → ours."""
  v, t = "vision_model", "text_model"
  rules = [
    _Rule("visual/conv1/kernel", f"{v}.embeddings.patch_embedding.weight", _conv_kernel),
    _Rule("visual/class_embedding", f"{v}.embeddings.class_embedding", _identity),
    _Rule("visual/positional_embedding", f"{v}.embeddings.position_embedding.weight", _identity),
    *_ln_rules("visual/ln_pre", f"{v}.pre_layrnorm"),
    *_ln_rules("visual/ln_post", f"{v}.post_layernorm"),
    _Rule("visual/proj", "visual_projection.weight", _transpose),
    _Rule("text/token_embedding/embedding", f"{t}.embeddings.token_embedding.weight", _identity),
    _Rule("text/positional_embedding", f"{t}.embeddings.position_embedding.weight", _identity),
    *_ln_rules("text/ln_final", f"{t}.final_layer_norm"),
    _Rule("text/text_projection", "text_projection.weight", _transpose),
    _Rule("logit_scale", "logit_scale", _identity),
  ]
  for i in range(config.vision_layers):
    rules += _block_rules(
      f"visual/transformer/resblocks_{i}", f"{v}.encoder.layers.{i}", config.vision_heads, "hf"
    )
  for i in range(config.text_layers):
    rules += _block_rules(
      f"text/transformer/resblocks_{i}", f"{t}.encoder.layers.{i}", config.text_heads, "hf"
    )
  return rules


def _openai_rules(config: ml_collections.ConfigDict) -> list[_Rule]:
  """OpenAI CLIP (and FaRL) state dict → ours."""
  rules = [
    _Rule("visual/conv1/kernel", "visual.conv1.weight", _conv_kernel),
    _Rule("visual/class_embedding", "visual.class_embedding", _identity),
    _Rule("visual/positional_embedding", "visual.positional_embedding", _identity),
    *_ln_rules("visual/ln_pre", "visual.ln_pre"),
    *_ln_rules("visual/ln_post", "visual.ln_post"),
    _Rule("visual/proj", "visual.proj", _identity),
    _Rule("text/token_embedding/embedding", "token_embedding.weight", _identity),
    _Rule("text/positional_embedding", "positional_embedding", _identity),
    *_ln_rules("text/ln_final", "ln_final"),
    _Rule("text/text_projection", "text_projection", _identity),
    _Rule("logit_scale", "logit_scale", _identity),
  ]
  for i in range(config.vision_layers):
    rules += _block_rules(
      f"visual/transformer/resblocks_{i}",
      f"visual.transformer.resblocks.{i}",
      config.vision_heads,
      "openai",
    )
  for i in range(config.text_layers):
    rules += _block_rules(
      f"text/transformer/resblocks_{i}", f"transformer.resblocks.{i}", config.text_heads, "openai"
    )
  return rules


_HF_NAMESPACES = (
  "vision_model.",
  "text_model.",
  "visual_projection.",
  "text_projection.",
  "logit_scale",
)
_OPENAI_NAMESPACES = (
  "visual.",
  "transformer.",
  "token_embedding.",
  "positional_embedding",
  "ln_final.",
  "text_projection",
  "logit_scale",
)


def _apply_rules(
  state: Mapping[str, np.ndarray], rules: list[_Rule], namespaces: tuple[str, ...], what: str
) -> Params:
  """Converts `state` with `rules`; errors/warnings name the offending keys."""
  used = {r.src for r in rules}
  missing = sorted({r.src for r in rules if r.src not in state})
  extra = [k for k in state if k not in used]
  harmless = [k for k in extra if _HARMLESS.match(k)]
  outside = [k for k in extra if k not in harmless and not k.startswith(namespaces)]
  unexpected = [k for k in extra if k not in harmless and k not in outside]
  if missing or unexpected:
    lines = [f"{what}: the state dict does not match the inferred CLIP architecture."]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    raise ValueError("\n".join(lines))
  if harmless or outside:
    warnings.warn(
      f"{what}: ignoring {len(harmless + outside)} key(s) that are not "
      f"CLIP parameters: {_preview(harmless + outside)}"
    )
  flat = {}
  for rule in rules:
    flat[rule.dst] = np.ascontiguousarray(rule.fn(state[rule.src]), dtype=np.float32)
  flat["logit_scale"] = flat["logit_scale"].reshape(())
  return traverse_util.unflatten_dict(flat, sep="/")


# --------------------------------------------------------------------------- #
# Architecture inference
# --------------------------------------------------------------------------- #
def _require(state: Mapping[str, np.ndarray], key: str, what: str) -> np.ndarray:
  if key not in state:
    raise ValueError(
      f"{what}: required key {key!r} is missing, so the architecture cannot be "
      f"inferred (a CLIP ViT with both towers is expected). Keys look like: "
      f"{_preview(sorted(state))}"
    )
  return state[key]


def _count_layers(state: Mapping[str, Any], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
  if not found:
    return 0
  if found != set(range(max(found) + 1)):
    raise ValueError(f"Layers under {prefix!r} are not numbered 0..N-1: {sorted(found)}")
  return max(found) + 1


def _grid(num_positions: int, what: str) -> int:
  grid = math.isqrt(num_positions - 1)
  if grid * grid != num_positions - 1:
    raise ValueError(f"{what}: {num_positions} image positions is not 1 + a square grid.")
  return grid


def _mlp_ratio(vision: tuple[int, int], text: tuple[int, int], what: str) -> float:
  """Single MLP ratio from (hidden, width) of both towers."""
  rv, rt = vision[0] / vision[1], text[0] / text[1]
  if not math.isclose(rv, rt):
    raise ValueError(
      f"{what}: image MLP ratio {rv} differs from text MLP ratio {rt}; "
      "one mlp_ratio for both towers is supported."
    )
  return float(rv)


def _make_config(fields: dict[str, Any], overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """model_config from inferred fields + user overrides; variant named if it matches."""
  config = variants.model_config("B/16", **{**fields, **overrides})
  config.variant = "custom"
  for name in variants.VARIANTS:
    ref = variants.model_config(name)
    if all(ref[k] == config[k] for k in _ARCH_FIELDS):
      config.variant = name
      break
  return config


def _check_against_model(params: Params, config: ml_collections.ConfigDict, what: str) -> None:
  """Raises ValueError naming params whose names/shapes differ from the model's."""
  c = config
  model = models.build(c)
  shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  ref = traverse_util.flatten_dict(shapes, sep="/")
  got = traverse_util.flatten_dict(params, sep="/")
  missing = [k for k in ref if k not in got]
  unexpected = [k for k in got if k not in ref]
  mismatched = [
    f"{k} (loaded {tuple(got[k].shape)} vs model {tuple(ref[k].shape)})"
    for k in ref
    if k in got and tuple(got[k].shape) != tuple(ref[k].shape)
  ]
  _raise_if_any(what, missing, unexpected, mismatched)


# --------------------------------------------------------------------------- #
# hf:DIR
# --------------------------------------------------------------------------- #
# transformers CLIPTextConfig / CLIPVisionConfig defaults (config.json may omit them).
_HF_DEFAULTS = {
  "text": dict(
    num_attention_heads=8, hidden_act="quick_gelu", eos_token_id=49407, layer_norm_eps=1e-5
  ),
  "vision": dict(num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5),
}
_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


def load_hf(path: str, **overrides: Any) -> tuple[ml_collections.ConfigDict, Params]:
  """Loads a transformers CLIPModel folder (config.json + *.safetensors)."""
  what = f"hf:{path}"
  cfg_path = paths.path(path) / "config.json"
  if not paths.path(path).is_dir():
    raise FileNotFoundError(f"{what}: not a directory.")
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{what}: no config.json in {path}.")
  try:
    hf_config = json.loads(cfg_path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: invalid JSON ({e}).") from e

  def setting(tower: str, key: str) -> Any:
    sub = hf_config.get(f"{tower}_config") or {}
    return sub.get(key, _HF_DEFAULTS[tower].get(key))

  acts = {tower: setting(tower, "hidden_act") for tower in ("vision", "text")}
  for tower, act in acts.items():
    if act not in _HF_ACTS:
      raise ValueError(
        f"{cfg_path}: {tower}_config.hidden_act={act!r} is not supported; "
        f"supported: {sorted(_HF_ACTS)}."
      )
    eps = setting(tower, "layer_norm_eps")
    if not math.isclose(eps, 1e-5):
      raise ValueError(
        f"{cfg_path}: {tower}_config.layer_norm_eps={eps} is not supported (CLIP uses 1e-5)."
      )
  if acts["vision"] != acts["text"]:
    raise ValueError(
      f"{cfg_path}: towers use different activations {acts}; one act for both towers is supported."
    )
  eos = setting("text", "eos_token_id")
  state = _read_hf_weights(path, what)

  v, t = "vision_model", "text_model"
  patch_w = _require(state, f"{v}.embeddings.patch_embedding.weight", what)
  vis_pos = _require(state, f"{v}.embeddings.position_embedding.weight", what)
  tok = _require(state, f"{t}.embeddings.token_embedding.weight", what)
  txt_pos = _require(state, f"{t}.embeddings.position_embedding.weight", what)
  txt_proj = _require(state, "text_projection.weight", what)
  vis_fc = _require(state, f"{v}.encoder.layers.0.mlp.fc1.weight", what)
  txt_fc = _require(state, f"{t}.encoder.layers.0.mlp.fc1.weight", what)
  patch = patch_w.shape[-1]
  fields = dict(
    image_size=patch * _grid(vis_pos.shape[0], what),
    patch_size=patch,
    vision_width=patch_w.shape[0],
    vision_layers=_count_layers(state, f"{v}.encoder.layers."),
    vision_heads=setting("vision", "num_attention_heads"),
    mlp_ratio=_mlp_ratio(vis_fc.shape, txt_fc.shape, what),
    text_width=tok.shape[1],
    text_layers=_count_layers(state, f"{t}.encoder.layers."),
    text_heads=setting("text", "num_attention_heads"),
    vocab_size=tok.shape[0],
    context_length=txt_pos.shape[0],
    embed_dim=txt_proj.shape[0],
    act=_HF_ACTS[acts["vision"]],
    # transformers' CLIPTextTransformer: eos_token_id == 2 is the legacy config
    # value and means "argmax of the token ids"; otherwise first eos position.
    text_pooling="argmax" if eos == 2 else "eos_id",
    eos_token_id=eos if eos != 2 else tok.shape[0] - 1,
  )
  config = _make_config(fields, overrides)
  params = _apply_rules(state, _hf_rules(config), _HF_NAMESPACES, what)
  return config, params


def _read_hf_weights(path: str, what: str) -> dict[str, np.ndarray]:
  folder = paths.path(path)
  single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
  if single.is_file():
    return _read_safetensors(os.fspath(single))
  if index.is_file():
    files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    state = {}
    for name in files:
      state.update(_read_safetensors(os.fspath(folder / name)))
    return state
  torch_bin = folder / "pytorch_model.bin"
  if torch_bin.is_file():
    return _read_torch_file(os.fspath(torch_bin))
  raise FileNotFoundError(
    f"{what}: no model.safetensors (or model.safetensors.index.json, pytorch_model.bin) in {path}."
  )


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file as numpy arrays, in their stored dtypes.

  BF16 tensors come as `ml_dtypes.bfloat16` arrays: safetensors builds numpy arrays by dtype name,
  and numpy knows 'bfloat16' once ml_dtypes has registered it. A file safetensors cannot parse
  (truncated, not safetensors) is a ValueError naming the path.
  """
  import ml_dtypes  # noqa: F401  # registers the name 'bfloat16' with numpy
  import safetensors  # pylint: disable=g-import-not-at-top
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  try:
    if paths.is_remote(path):
      # An object is read through a local copy: safetensors' loader of bytes knows no BF16.
      with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(paths.path(path).read_bytes())
        f.flush()
        return safetensors.numpy.load_file(f.name)
    return safetensors.numpy.load_file(path)
  except safetensors.SafetensorError as e:
    raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
  except TypeError as e:  # a dtype numpy has no name for, even with ml_dtypes
    raise ValueError(f"{path}: a tensor has a dtype numpy cannot hold ({e})") from None


# --------------------------------------------------------------------------- #
# openai:FILE (OpenAI CLIP .pt TorchScript archives, FaRL / open_clip .pth dicts)
# --------------------------------------------------------------------------- #
def load_openai(path: str, **overrides: Any) -> tuple[ml_collections.ConfigDict, Params]:
  """Loads an OpenAI-format CLIP ViT state dict (TorchScript archive or torch.save).

  Heads are inferred as width // 64 (OpenAI's rule); override vision_heads /
  text_heads for checkpoints that differ. Pooling is 'argmax' (EOT = largest id).
  """
  what = f"openai:{path}"
  state = _strip_prefix(_read_torch_file(path), what)
  if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in state):
    raise ValueError(f"{what}: a ResNet CLIP checkpoint; only ViT CLIP is supported.")
  conv = _require(state, "visual.conv1.weight", what)
  vis_pos = _require(state, "visual.positional_embedding", what)
  tok = _require(state, "token_embedding.weight", what)
  txt_pos = _require(state, "positional_embedding", what)
  txt_proj = _require(state, "text_projection", what)
  vis_fc = _require(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", what)
  txt_fc = _require(state, "transformer.resblocks.0.mlp.c_fc.weight", what)
  vision_width, text_width = conv.shape[0], tok.shape[1]
  patch = conv.shape[-1]
  fields = dict(
    image_size=patch * _grid(vis_pos.shape[0], what),
    patch_size=patch,
    vision_width=vision_width,
    vision_layers=_count_layers(state, "visual.transformer.resblocks."),
    vision_heads=max(1, vision_width // 64),
    mlp_ratio=_mlp_ratio(vis_fc.shape, txt_fc.shape, what),
    text_width=text_width,
    text_layers=_count_layers(state, "transformer.resblocks."),
    text_heads=max(1, text_width // 64),
    vocab_size=tok.shape[0],
    context_length=txt_pos.shape[0],
    embed_dim=txt_proj.shape[1],
    act="quick_gelu",
    text_pooling="argmax",
    eos_token_id=tok.shape[0] - 1,
  )
  config = _make_config(fields, overrides)
  params = _apply_rules(state, _openai_rules(config), _OPENAI_NAMESPACES, what)
  return config, params


def _read_torch_file(path: str) -> dict[str, np.ndarray]:
  """A TorchScript archive's state_dict or a torch.save'd (state) dict, as numpy."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f"Reading {path} needs PyTorch (the CPU build is enough): pip install torch."
    ) from e
  if not paths.path(path).is_file():
    raise FileNotFoundError(f"{path}: no such file.")
  # torch reads a local file by name; an object (gs://) is read into memory first.
  data = io.BytesIO(paths.path(path).read_bytes()) if paths.is_remote(path) else None

  def source():
    if data is None:
      return path
    data.seek(0)
    return data

  if _is_torchscript(source()):
    with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI ships it.
      warnings.simplefilter("ignore", DeprecationWarning)
      obj = torch.jit.load(source(), map_location="cpu").state_dict()
  else:
    try:
      obj = torch.load(source(), map_location="cpu", weights_only=True)
    except Exception:  # pylint: disable=broad-except
      # Non-tensor objects (e.g. training args in FaRL/open_clip checkpoints) need
      # full unpickling; anything else unreadable is reported with the path.
      try:
        obj = torch.load(source(), map_location="cpu", weights_only=False)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"{path}: not a readable torch checkpoint ({e}).") from e
      warnings.warn(
        f"{path} holds non-tensor Python objects and was fully unpickled "
        "(only load files you trust)."
      )
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(
      f'{path}: expected a state dict (or {{"state_dict": ...}}), got {type(obj).__name__}.'
    )
  out = {}
  for key, value in obj.items():
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      out[str(key)] = (value.float() if value.is_floating_point() else value).numpy()
  return out


def _is_torchscript(path: str | io.BytesIO) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _strip_prefix(state: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
  """Drops a wrapper prefix ('module.', 'clip.', ...) found before 'visual.conv1.weight'.

  Keys without the prefix are kept as they are (and later reported as extras).
  """
  anchor = "visual.conv1.weight"
  prefixes = {k[: -len(anchor)] for k in state if k.endswith(anchor)}
  if len(prefixes) > 1:
    raise ValueError(
      f"{what}: several CLIP models in one state dict (prefixes {sorted(prefixes)})."
    )
  if not prefixes or prefixes == {""}:
    return state
  prefix = prefixes.pop()
  return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def _preview(names: list[str], limit: int = 20) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _raise_if_any(
  what: str, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> None:
  if not (missing or unexpected or mismatched):
    return
  lines = [f"{what}: parameters do not match the model."]
  if missing:
    lines.append(f"  missing ({len(missing)}): {_preview(missing)}")
  if unexpected:
    lines.append(f"  unexpected ({len(unexpected)}): {_preview(unexpected)}")
  if mismatched:
    lines.append(f"  shape mismatch ({len(mismatched)}): {_preview(mismatched)}")
  raise ValueError("\n".join(lines))


def load_clef(path: str, **overrides: Any) -> tuple[ml_collections.ConfigDict, Params]:
  """A clef-jax run folder (its config.json + latest orbax checkpoint): model config, towers.

  The run's objective heads (projection head, AU scale/bias, linear classifiers) are left out:
  a new run initialises its own.
  """
  from clef_jax import checkpoint  # pylint: disable=g-import-not-at-top  (orbax, lazily)

  run_config, params = checkpoint.load_params(path)
  if "model" not in run_config:
    raise ValueError(f'{path}/config.json has no "model" section; not a clef-jax run?')
  config = ml_collections.ConfigDict(run_config["model"])
  for key, value in overrides.items():
    config[key] = value
  variants.check_config(config)
  return config, {k: v for k, v in params.items() if k != "heads"}


_LOADERS: dict[str, Loader] = {"clef": load_clef, "hf": load_hf, "openai": load_openai}
