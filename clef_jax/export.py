"""Export our CLIP params as a transformers CLIP folder (the inverse of `pretrained.load('hf:')`).

  export.save_hf('/ckpt/clef-tiny', params, model_config, tokenizer_dir='/tok', dtype='bfloat16')
  model = transformers.CLIPModel.from_pretrained('/ckpt/clef-tiny')
  tokenizer = transformers.CLIPTokenizerFast.from_pretrained('/ckpt/clef-tiny')
  model_config, params = pretrained.load('hf:/ckpt/clef-tiny')

The folder holds config.json (a CLIPConfig), model.safetensors (the CLIPModel state dict),
the tokenizer files of `tokenizer_dir` (a CLIP-format folder, e.g. from
`tools/build_tokenizer.py --clip_out`) and a README.md. The conversion runs `pretrained._hf_rules`
backwards, and every converted tensor is checked to map back onto our parameter exactly.

Text pooling: transformers pools the text tower at the first `eos_token_id` of each row (any
eos_token_id but 2, which it reads as the legacy argmax-of-ids pooling). Our 'eos_id' pooling is
the same; our 'argmax' pooling equals it when the end-of-text token is the largest id of the
tokenizer (CLIP's layout), so it is exported with that id.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from clef_jax import pretrained
from clef_jax import tokenizer as tokenizer_lib
from clef_jax.models import variants
from clef_jax.models import vit
from input_pipeline import paths

DTYPES = ("float32", "bfloat16", "float16")
TOKENIZER_FILES = (
  "vocab.json",
  "merges.txt",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.json",
)
_TOWERS = ("visual", "text", "logit_scale")
_FP16_MAX = float(np.finfo(np.float16).max)
# transformers' `hidden_act` for our `act` (the inverse of pretrained._HF_ACTS).
_ACT_TO_HF = {ours: theirs for theirs, ours in pretrained._HF_ACTS.items()}


# --------------------------------------------------------------------------- #
# State dict
# --------------------------------------------------------------------------- #
def to_hf_state_dict(
  params: Mapping[str, Any], model_config: Mapping[str, Any]
) -> dict[str, np.ndarray]:
  """Our params → a transformers CLIPModel state dict (names and layouts).

  Args:
    params: `{'visual': ..., 'text': ..., 'logit_scale': []}` as `models.build(model_config)`
      lays them out; jax or numpy arrays of any float dtype.
    model_config: a `variants.model_config` ConfigDict.

  Returns:
    `{hf_name: float32 np.ndarray}` (torch layouts: Linear weights `[out, in]`, the patch
    embedding `[W, 3, P, P]`, `logit_scale` `[]`); `pretrained` maps it back onto `params`
    exactly.

  Raises:
    ValueError naming parameters that are missing, unexpected (e.g. objective 'heads'),
    of the wrong shape, or not floating point.
  """
  config = _as_config(model_config)
  extra = sorted(set(params) - set(_TOWERS))
  if extra:
    raise ValueError(
      f"to_hf_state_dict: params hold {extra} besides the CLIP towers {list(_TOWERS)}; "
      "pass only those (e.g. {k: v for k, v in params.items() if k != 'heads'})."
    )
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  not_float = [
    f"{k} ({np.asarray(v).dtype})"
    for k, v in flat.items()
    if not jnp.issubdtype(np.asarray(v).dtype, jnp.floating)
  ]
  if not_float:
    raise ValueError(f"to_hf_state_dict: non-float parameters: {pretrained._preview(not_float)}")
  flat = {k: np.asarray(jax.device_get(v)).astype(np.float32) for k, v in flat.items()}
  pretrained._check_against_model(
    traverse_util.unflatten_dict(flat, sep="/"), config, what="to_hf_state_dict"
  )
  state = {}
  for rule in pretrained._hf_rules(config):
    ours = flat[rule.dst]
    inv = pretrained.inverse(rule)
    if inv is None:
      raise ValueError(f"to_hf_state_dict: the rule of {rule.dst} has no inverse in pretrained.py")
    theirs = np.asarray(inv(ours), order="C")  # (ascontiguousarray makes [] [1])
    back = rule.fn(theirs)
    if back.shape != ours.shape or not np.array_equal(back, ours):
      raise AssertionError(f"to_hf_state_dict: {rule.dst} -> {rule.src} does not invert")
    state[rule.src] = theirs
  return state


def hf_config(
  model_config: Mapping[str, Any],
  tokenizer: tokenizer_lib.Tokenizer | str | os.PathLike | None = None,
) -> dict[str, Any]:
  """A transformers CLIPConfig (as a JSON-able dict) of our model config.

  Args:
    model_config: a `variants.model_config` ConfigDict.
    tokenizer: the model's tokenizer (a `clef_jax.tokenizer.Tokenizer`, or an HF tokenizer
      folder), giving bos/eos/pad ids; None: CLIP's layout around the pooled eos id
      (bos = eos - 1, pad = eos).

  Returns:
    `{'model_type': 'clip', 'text_config': {...}, 'vision_config': {...}, ...}`.

  Raises:
    ValueError: the tokenizer does not fit the model (more ids than the embedding table, an
    end-of-text id other than the pooled one), or the pooled id is 2 (which transformers
    reads as argmax-of-ids pooling).
  """
  c = _as_config(model_config)
  if c.act not in _ACT_TO_HF:
    raise ValueError(f"hf_config: act={c.act!r} has no transformers hidden_act.")
  if isinstance(tokenizer, (str, os.PathLike)):
    tokenizer = tokenizer_lib.get(f"hf:{os.fspath(tokenizer)}", c.context_length)
  eos = _pooled_eos_id(c, tokenizer)
  if tokenizer is not None:
    bos, pad = tokenizer.sot_token_id, tokenizer.pad_token_id
  else:
    bos, pad = max(eos - 1, 0), eos
  common = dict(
    hidden_act=_ACT_TO_HF[c.act],
    layer_norm_eps=vit.LN_EPS,
    projection_dim=c.embed_dim,
    attention_dropout=0.0,
  )
  text = dict(
    model_type="clip_text_model",
    vocab_size=c.vocab_size,
    hidden_size=c.text_width,
    intermediate_size=variants.mlp_dim(c, c.text_width),
    num_hidden_layers=c.text_layers,
    num_attention_heads=c.text_heads,
    max_position_embeddings=c.context_length,
    bos_token_id=int(bos),
    eos_token_id=int(eos),
    pad_token_id=int(pad),
    **common,
  )
  vision = dict(
    model_type="clip_vision_model",
    hidden_size=c.vision_width,
    intermediate_size=variants.mlp_dim(c, c.vision_width),
    num_hidden_layers=c.vision_layers,
    num_attention_heads=c.vision_heads,
    image_size=c.image_size,
    patch_size=c.patch_size,
    num_channels=3,
    **common,
  )
  return dict(
    architectures=["CLIPModel"],
    model_type="clip",
    projection_dim=c.embed_dim,
    logit_scale_init_value=float(c.logit_scale_init),
    initializer_factor=1.0,
    text_config=text,
    vision_config=vision,
  )


def _pooled_eos_id(c: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer | None) -> int:
  """The eos_token_id at whose first occurrence transformers must pool to match our tower."""
  if tok is not None and tok.vocab_size > c.vocab_size:
    raise ValueError(
      f"hf_config: tokenizer {tok.spec!r} has {tok.vocab_size} ids, more than the model's "
      f"vocab_size={c.vocab_size}."
    )
  if c.text_pooling == "eos_id":
    eos = c.eos_token_id
    if tok is not None and tok.eot_token_id != eos:
      raise ValueError(
        f"hf_config: the model pools at eos_token_id={eos} but tokenizer {tok.spec!r} ends "
        f"texts with {tok.eot_token_id}."
      )
  elif tok is None:
    eos = c.vocab_size - 1  # argmax of the ids = first position of the largest id
  else:
    eos = tok.eot_token_id
    if eos != tok.vocab_size - 1:
      raise ValueError(
        f"hf_config: the model pools at the largest token id (text_pooling='argmax'), but "
        f"tokenizer {tok.spec!r} ends texts with {eos}, not its largest id {tok.vocab_size - 1}."
      )
  if eos == 2:
    raise ValueError(
      "hf_config: the end-of-text id is 2, which transformers' CLIP reads as the legacy "
      "argmax-of-ids pooling; use a tokenizer whose end-of-text id is not 2."
    )
  return int(eos)


# --------------------------------------------------------------------------- #
# The folder
# --------------------------------------------------------------------------- #
def save_hf(
  out_dir: str | os.PathLike,
  params: Mapping[str, Any],
  model_config: Mapping[str, Any],
  tokenizer_dir: str | os.PathLike | None = None,
  dtype: str = "float32",
  extra_readme: str = "",
  overwrite: bool = False,
  extra: Callable[[pathlib.Path], Any] | None = None,
) -> pathlib.Path:
  """Writes a transformers CLIP folder that `CLIPModel.from_pretrained` and `pretrained.load` read.

  Args:
    out_dir: the folder to write; it must not exist or be empty, unless `overwrite`.
    params: our CLIP params (see `to_hf_state_dict`).
    model_config: their `variants.model_config`.
    tokenizer_dir: a CLIP-format tokenizer folder (vocab.json + merges.txt, or
      tokenizer.json); its files of TOKENIZER_FILES are copied and its special ids go into
      config.json. None: no tokenizer files (ids as in `hf_config`).
    dtype: weights dtype in model.safetensors, one of DTYPES (`pretrained.load` casts back to
      float32).
    extra_readme: Markdown appended to the generated README.md.
    overwrite: replace an existing non-empty `out_dir`.
    extra: called with the (temporary) folder to write more files into it before it is moved
      into place (e.g. `heads.save`).

  Returns:
    out_dir as a Path. The folder is written beside it under a temporary name and renamed into
    place, so on any error nothing half-written is left and an old folder is kept.
  """
  if dtype not in DTYPES:
    raise ValueError(f"save_hf: dtype={dtype!r}; expected one of {list(DTYPES)}.")
  out = pathlib.Path(out_dir).expanduser()
  if out.exists() and not out.is_dir():
    raise NotADirectoryError(f"save_hf: {out} exists and is not a folder.")
  if out.is_dir() and not overwrite:
    present = sorted(p.name for p in out.iterdir())
    if present:
      raise FileExistsError(
        f"save_hf: {out} is not empty ({pretrained._preview(present, 5)}); "
        "pass overwrite=True to replace it."
      )
  config = _as_config(model_config)
  tok, tok_files = None, []
  if tokenizer_dir is not None:
    tok_path = pathlib.Path(tokenizer_dir).expanduser()
    tok = tokenizer_lib.get(f"hf:{tok_path}", config.context_length)
    tok_files = [tok_path / n for n in TOKENIZER_FILES if (tok_path / n).is_file()]
    _check_max_length(tok_path, config.context_length)
  hf = hf_config(config, tok)
  hf["dtype"] = dtype
  state = to_hf_state_dict(params, config)
  state = {k: _cast(k, v, dtype) for k, v in state.items()}
  scale = float(state["logit_scale"])
  if scale > config.logit_scale_max:
    warnings.warn(
      f"save_hf: logit_scale {scale:.4f} exceeds logit_scale_max {config.logit_scale_max:.4f}; "
      "our model clips it there, transformers' CLIPModel does not (its logits will be larger)."
    )
  readme = _readme(out.name, config, hf, dtype, tok, extra_readme)

  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
  try:
    _write_folder(tmp, hf, state, tok_files, readme)
    if extra is not None:
      extra(tmp)
      _fix_modes(tmp)
    _swap_into_place(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def _write_folder(
  folder: pathlib.Path,
  hf: dict[str, Any],
  state: dict[str, np.ndarray],
  tok_files: list[pathlib.Path],
  readme: str,
) -> None:
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  (folder / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
  safetensors.numpy.save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
  for src in tok_files:
    shutil.copyfile(src, folder / src.name)
  (folder / "README.md").write_text(readme, encoding="utf-8")
  _fix_modes(folder)


def _fix_modes(folder: pathlib.Path) -> None:
  # mkdtemp makes the folder 0700 and safetensors writes 0600: give them the usual modes.
  umask = os.umask(0)
  os.umask(umask)
  folder.chmod(0o777 & ~umask)
  for f in folder.iterdir():
    f.chmod(0o666 & ~umask)


def _swap_into_place(tmp: pathlib.Path, out: pathlib.Path) -> None:
  """Renames `tmp` to `out`; an existing `out` is moved aside first and removed after."""
  if not out.exists():
    os.rename(tmp, out)
    return
  old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
  os.rmdir(old)
  os.rename(out, old)
  try:
    os.rename(tmp, out)
  except BaseException:
    os.rename(old, out)
    raise
  shutil.rmtree(old, ignore_errors=True)


def _cast(name: str, x: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "float32":
    return x
  if dtype == "float16":
    big = float(np.max(np.abs(x))) if x.size else 0.0
    if big > _FP16_MAX:
      raise ValueError(
        f"save_hf: {name} holds |x| = {big:g}, beyond float16's range ({_FP16_MAX:g}); "
        "use dtype='bfloat16' or 'float32'."
      )
    return x.astype(np.float16)
  import ml_dtypes  # pylint: disable=g-import-not-at-top

  return x.astype(ml_dtypes.bfloat16)


def _check_max_length(folder: pathlib.Path, context_length: int) -> None:
  """Warns when the tokenizer folder would let transformers make rows longer than the model."""
  path = folder / "tokenizer_config.json"
  try:
    max_length = json.loads(path.read_text(encoding="utf-8")).get("model_max_length")
  except (OSError, ValueError):
    max_length = None
  if max_length != context_length:
    warnings.warn(
      f"save_hf: {path} sets model_max_length={max_length}, not the model's context_length="
      f"{context_length}; transformers users must pass max_length={context_length}."
    )


def _readme(
  name: str,
  c: ml_collections.ConfigDict,
  hf: dict[str, Any],
  dtype: str,
  tok: tokenizer_lib.Tokenizer | None,
  extra: str,
) -> str:
  mean = ", ".join(f"{m:.8g}" for m in vit.CLIP_MEAN)
  std = ", ".join(f"{s:.8g}" for s in vit.CLIP_STD)
  tokenizer_line = (
    f"- Tokenizer: CLIP-format BPE ({tok.vocab_size} ids) in this folder; rows of at most "
    f"{c.context_length} tokens, pooled at the first end-of-text id "
    f"{hf['text_config']['eos_token_id']}."
    if tok is not None
    else "- Tokenizer: not included."
  )
  text = f"""---
library_name: transformers
tags: [clip, clef-jax]
---
# {name}

A CLIP-style model trained with clef-jax, exported as a transformers `CLIPModel` folder.

- Image tower: ViT, {c.image_size}x{c.image_size} px, patch {c.patch_size}, width {c.vision_width},
  {c.vision_layers} layers, {c.vision_heads} heads.
- Text tower: width {c.text_width}, {c.text_layers} layers, {c.text_heads} heads,
  vocabulary {c.vocab_size}, context {c.context_length}.
- Embedding dim {c.embed_dim}, activation `{hf["vision_config"]["hidden_act"]}`, weights {dtype}.
{tokenizer_line}
- Images: RGB at {c.image_size}x{c.image_size}, scaled to [0, 1], then normalised with mean
  ({mean}) and std ({std}).

```python
import transformers

model = transformers.CLIPModel.from_pretrained(PATH)
tokenizer = transformers.AutoTokenizer.from_pretrained(PATH)
ids = tokenizer(texts, padding="max_length", max_length={c.context_length}, truncation=True)
```
"""
  return text + ("\n" + extra.strip() + "\n" if extra.strip() else "")


def _as_config(model_config: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A checked, mutable copy of a model config (ConfigDict, FrozenConfigDict or dict)."""
  config = ml_collections.ConfigDict({k: model_config[k] for k in model_config.keys()})
  variants.check_config(config)
  return config


# --------------------------------------------------------------------------- #
# A run's export: `python -m clef_jax.export --workdir=RUN --out=DIR`
# --------------------------------------------------------------------------- #
_EMBEDDED_TOKENIZER_CONFIG = {
  "tokenizer_class": "PreTrainedTokenizerFast",
  "bos_token": tokenizer_lib.SOT_TOKEN,
  "eos_token": tokenizer_lib.EOT_TOKEN,
  "pad_token": tokenizer_lib.PAD_TOKEN,
}


_HEAD_OUTPUT = {
  "sigmoid": "sigmoid >= 0.5 is present",
  "softmax": "softmax over the labels",
  "expected_level": "the intensity of AU j is softmax(logits.view(N, J, levels)[:, j]) @ "
  "arange(levels)",
  "clip": "the intensity is logits.clamp(0, levels - 1)",
}


def export_run(
  workdir: str,
  out_dir: str | os.PathLike,
  *,
  step: int | None = None,
  dtype: str = "float32",
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes a run's towers as a transformers CLIP folder, its tokenizer, and (fine-tuning runs)
  its trained head in the `clef_jax.heads` side file (clef_heads.json + .safetensors).

  The tokenizer: a CLIP-format folder the run used is copied; the embedded tokenizer is written
  as its `tokenizer.json` with a `tokenizer_config.json` that `transformers.AutoTokenizer` reads
  (same ids as ours). `pretrained.load('hf:DIR')` and `clef_jax.predict --init=hf:DIR` read it.
  """
  from clef_jax import heads as heads_lib  # pylint: disable=g-import-not-at-top

  run = heads_lib.load_run(workdir, step)
  towers = {k: v for k, v in run.params.items() if k in _TOWERS}
  model_config = run.config.model
  head_line = (
    f"- Head: {run.head.task.upper()} ({len(run.head.labels)} labels, trained as "
    f"'{run.head.trained_head}') in `{heads_lib.JSON_NAME}` + `{heads_lib.TENSORS_NAME}`: "
    f"`logits = z @ weight.T + bias` on the L2-normalised image embedding z; "
    f"{_HEAD_OUTPUT[run.head.output]}."
    if run.head is not None
    else "- Head: none (a run without a trained label head)."
  )
  readme = (
    f"Exported by `python -m clef_jax.export` from the clef-jax run `{paths.text(workdir)}`"
    f" (mode {run.config.mode}, step {run.step}).\n\n{head_line}\n"
  )

  def extra(folder: pathlib.Path) -> None:
    if run.head is not None:
      heads_lib.save(folder, [run.head])

  with tempfile.TemporaryDirectory(prefix="clef_export_tok_") as tmp:
    tok_dir = pathlib.Path(run.tokenizer.spec)
    if isinstance(run.tokenizer, tokenizer_lib._Embedded):  # pylint: disable=protected-access
      tok_dir = pathlib.Path(tmp)
      src = (
        tokenizer_lib.EMBEDDED_PATH
        if run.tokenizer.spec == "embedded"
        else pathlib.Path(run.tokenizer.spec) / "tokenizer.json"
      )
      shutil.copyfile(src, tok_dir / "tokenizer.json")
      cfg = dict(_EMBEDDED_TOKENIZER_CONFIG, model_max_length=int(model_config.context_length))
      (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return save_hf(
      out_dir,
      towers,
      model_config,
      tokenizer_dir=tok_dir,
      dtype=dtype,
      extra_readme=readme,
      overwrite=overwrite,
      extra=extra,
    )


def main(argv: list[str] | None = None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  ap = argparse.ArgumentParser(
    prog="python -m clef_jax.export",
    description="Export a clef-jax run as a transformers CLIP folder (+ its trained head).",
  )
  ap.add_argument(
    "--workdir", required=True, help="a clef-jax run folder (config.json + checkpoints)"
  )
  ap.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  ap.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype")
  ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  args = ap.parse_args(argv)
  try:
    out = export_run(
      args.workdir, args.out, step=args.step, dtype=args.dtype, overwrite=args.overwrite
    )
  except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  files = sorted(p.name for p in out.iterdir())
  print(f"wrote {out}: {', '.join(files)}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
