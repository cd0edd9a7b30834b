"""HF export: our tiny CLIP saved as a transformers folder vs transformers' PyTorch CLIPModel,
our loader, and CLIP tokenizers (transformers and a pure-Python CLIP BPE) on the same files."""

import functools
import importlib.util
import json
import pathlib
import shutil
import unicodedata

import jax
import ml_dtypes
import numpy as np
import pytest
import regex
import safetensors.numpy
import torch
import transformers
from flax import traverse_util

from clef_jax import export
from clef_jax import models
from clef_jax import pretrained
from clef_jax import tokenizer
from tests.test_tokenizer import _bytes_to_unicode  # GPT-2/CLIP byte table, written once

_ROOT = pathlib.Path(__file__).resolve().parent.parent
TOL = 1e-4
CONTEXT = 16
VOCAB = 620
SOT, EOT = "<|startoftext|>", "<|endoftext|>"

_WHO = ["woman", "man", "girl", "boy", "old man", "young woman", "child", "teenager"]
_HOW = [
  "smiling broadly",
  "frowning with furrowed brows",
  "raising both eyebrows in surprise",
  "with closed eyes and a calm face",
  "laughing out loud",
  "pressing the lips together",
  "wrinkling the nose in disgust",
]
_WHERE = ["in a park", "at night", "under bright light", "near a window", "outdoors", "indoors"]
LINES = [
  f"A photo of a {_WHO[i % 8]} {_HOW[i % 7]}, {_WHERE[i % 6]}." for i in range(50)
]  # 50 distinct caption-like lines
TEXTS = [
  "A photo of a woman smiling broadly.",
  "",
  "  the SMILE\twith\n TEETH ",
  "He doesn't look happy; she's 42 years old!!",
  "Cafe\u0301 au lait, naïve ÜBER façade 😀 中文",
  "a face " * 12,  # longer than the context: truncated
  "zebra quokka xylophone's",
]


def _load_build_tokenizer():
  spec = importlib.util.spec_from_file_location(
    "build_tokenizer", _ROOT / "tools" / "build_tokenizer.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


build_tokenizer = _load_build_tokenizer()


# ------------------------------------------------------------------------------------------------
# A pure-Python CLIP BPE (OpenAI's simple_tokenizer / transformers 4's slow CLIPTokenizer).
# ------------------------------------------------------------------------------------------------
_CLIP_WORDS = regex.compile(
  r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
  regex.IGNORECASE,
)


class _ReferenceClip:
  """CLIP's BPE read from vocab.json + merges.txt (the format's own reader, no `tokenizers`)."""

  def __init__(self, folder: pathlib.Path):
    self.vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").strip().split("\n")
    assert lines[0].startswith("#version")
    self.ranks = {tuple(m.split()): i for i, m in enumerate(lines[1:])}

  def _bpe(self, piece: str) -> list[str]:
    chars = [_bytes_to_unicode()[b] for b in piece.encode("utf-8")]
    word = chars[:-1] + [chars[-1] + "</w>"]
    while len(word) > 1:
      pair = min(zip(word, word[1:]), key=lambda p: self.ranks.get(p, float("inf")))
      if pair not in self.ranks:
        break
      out, i = [], 0
      while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
          out.append(word[i] + word[i + 1])
          i += 2
        else:
          out.append(word[i])
          i += 1
      word = out
    return word

  def __call__(self, text: str, length: int) -> list[int]:
    text = " ".join(unicodedata.normalize("NFC", text).split()).lower()
    ids = [self.vocab[t] for piece in _CLIP_WORDS.findall(text) for t in self._bpe(piece)]
    sot, eot = self.vocab[SOT], self.vocab[EOT]
    row = [sot, *ids[: length - 2], eot]
    return row + [eot] * (length - len(row))


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> pathlib.Path:
  tok = build_tokenizer.build_clip(LINES, VOCAB)
  return build_tokenizer.save_clip_folder(tok, tmp_path_factory.mktemp("tok") / "clip", CONTEXT)


def _tiny(**overrides):
  """A tiny CLIP with random (not default-init) params, so every mapping matters."""
  fields = dict(
    image_size=32,
    patch_size=8,
    vocab_size=VOCAB,
    eos_token_id=VOCAB - 1,
    context_length=CONTEXT,
    dtype="float32",
  )
  config = models.model_config("tiny", **{**fields, **overrides})
  model = models.build(config)
  params = jax.jit(functools.partial(models.init, model))(jax.random.key(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  return config, model, jax.tree.unflatten(tree, noisy)


@pytest.fixture(scope="module")
def tiny():
  return _tiny()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny, tok_dir) -> pathlib.Path:
  config, _, params = tiny
  out = tmp_path_factory.mktemp("export") / "clef-tiny"
  return export.save_hf(out, params, config, tokenizer_dir=tok_dir, extra_readme="Trained on X.")


def _inputs(tok_folder):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  pixels = np.array(models.normalize_images(images))  # [B, H, W, 3] float32
  tokens = tokenizer.get(f"hf:{tok_folder}", CONTEXT)(TEXTS)
  return pixels, tokens


def _ours(model, params, pixels, tokens):
  variables = {"params": params}
  zimg = model.apply(variables, pixels, method="encode_image")
  ztxt = model.apply(variables, tokens, method="encode_text")
  return np.asarray(zimg), np.asarray(ztxt)


def _transformers(folder, pixels, tokens, **kwargs):
  model, info = transformers.CLIPModel.from_pretrained(
    str(folder), output_loading_info=True, **kwargs
  )
  model.eval()
  with torch.no_grad():
    img = model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    txt = model.get_text_features(input_ids=torch.from_numpy(tokens).long())
  norm = lambda x: (x / x.norm(dim=-1, keepdim=True)).float().numpy()
  return norm(img.pooler_output), norm(txt.pooler_output), info, model


def _flat(params):
  return traverse_util.flatten_dict(jax.device_get(params), sep="/")


# ------------------------------------------------------------------------------------------------
# (a) transformers' CLIPModel computes our embeddings
# ------------------------------------------------------------------------------------------------
def test_transformers_matches_ours(exported, tiny, tok_dir):
  config, model, params = tiny
  pixels, tokens = _inputs(tok_dir)
  zimg, ztxt = _ours(model, params, pixels, tokens)
  ref_img, ref_txt, info, hf = _transformers(exported, pixels, tokens)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  np.testing.assert_allclose(zimg, ref_img, atol=TOL, rtol=0)
  np.testing.assert_allclose(ztxt, ref_txt, atol=TOL, rtol=0)
  assert hf.logit_scale.item() == pytest.approx(float(params["logit_scale"]), abs=1e-6)
  hf_cfg = json.loads((exported / "config.json").read_text())
  assert hf_cfg["text_config"]["eos_token_id"] == VOCAB - 1 != 2
  assert hf_cfg["text_config"]["hidden_act"] == "quick_gelu"
  assert "Trained on X." in (exported / "README.md").read_text()


@pytest.mark.parametrize("pooling", ["eos_id", "argmax"])
def test_gelu_and_pooling_variants(tmp_path, tok_dir, pooling):
  """Exact GELU; 'eos_id' pooling, and 'argmax' with a model vocab larger than the tokenizer's."""
  vocab = VOCAB if pooling == "eos_id" else VOCAB + 8
  config, model, params = _tiny(act="gelu", text_pooling=pooling, vocab_size=vocab)
  out = export.save_hf(tmp_path / "m", params, config, tokenizer_dir=tok_dir)
  pixels, tokens = _inputs(tok_dir)
  zimg, ztxt = _ours(model, params, pixels, tokens)
  ref_img, ref_txt, _, _ = _transformers(out, pixels, tokens)
  np.testing.assert_allclose(zimg, ref_img, atol=TOL, rtol=0)
  np.testing.assert_allclose(ztxt, ref_txt, atol=TOL, rtol=0)
  assert json.loads((out / "config.json").read_text())["text_config"]["eos_token_id"] == VOCAB - 1


# ------------------------------------------------------------------------------------------------
# (b) our loader reads the folder back exactly
# ------------------------------------------------------------------------------------------------
def test_load_round_trip(exported, tiny):
  config, _, params = tiny
  loaded_config, loaded = pretrained.load(f"hf:{exported}")
  want, got = _flat(params), _flat(loaded)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == np.float32, key
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  for field in (*pretrained._ARCH_FIELDS, "act"):
    assert loaded_config[field] == config[field], field
  assert (loaded_config.text_pooling, loaded_config.eos_token_id) == ("eos_id", VOCAB - 1)


def test_state_dict_names_shapes_and_input_dtypes(tiny):
  """Names and shapes are CLIPModel's; jax/numpy bfloat16 params give their values in float32."""
  config, _, params = tiny
  state = export.to_hf_state_dict(params, config)
  hf = transformers.CLIPModel(transformers.CLIPConfig(**export.hf_config(config))).state_dict()
  assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in hf.items()}
  rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in state.items()}
  as_jax = jax.tree.map(lambda p: p.astype("bfloat16"), params)
  as_numpy = jax.tree.map(lambda p: np.asarray(p.astype("bfloat16")), params)
  for half in (as_jax, as_numpy):
    got = export.to_hf_state_dict(half, config)
    assert got.keys() == state.keys()
    for key, value in got.items():
      assert value.dtype == np.float32, key
      np.testing.assert_array_equal(value, rounded[key], err_msg=key)


# ------------------------------------------------------------------------------------------------
# (c) tokenizers agree
# ------------------------------------------------------------------------------------------------
def test_clip_tokenizer_folder_agrees_everywhere(tok_dir, exported, tmp_path):
  reference = _ReferenceClip(tok_dir)
  assert len(reference.vocab) == VOCAB
  assert (reference.vocab[SOT], reference.vocab[EOT]) == (VOCAB - 2, VOCAB - 1)
  chars = list(_bytes_to_unicode().values())
  assert [reference.vocab[c] for c in chars] == list(range(256))
  assert [reference.vocab[c + "</w>"] for c in chars] == list(range(256, 512))
  want = np.array([reference(t, CONTEXT) for t in TEXTS])
  assert (want[:, -1] == VOCAB - 1).all() and (want == VOCAB - 1).sum(1).min() >= 1

  # The same files without tokenizer.json: transformers builds its BPE from vocab + merges.
  plain = tmp_path / "plain"
  plain.mkdir()
  for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(tok_dir / name, plain / name)
  kwargs = dict(padding="max_length", max_length=CONTEXT, truncation=True)
  for folder in (tok_dir, plain, exported):
    fast = transformers.CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    slow = transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (
      VOCAB - 2,
      VOCAB - 1,
      VOCAB - 1,
    )
    assert fast.model_max_length == CONTEXT
    np.testing.assert_array_equal(fast(TEXTS, **kwargs)["input_ids"], want, err_msg=str(folder))
    np.testing.assert_array_equal(slow(TEXTS, **kwargs)["input_ids"], want, err_msg=str(folder))
    ours = tokenizer.get(f"hf:{folder}", CONTEXT)
    np.testing.assert_array_equal(ours(TEXTS), want, err_msg=str(folder))
    assert (ours.sot_token_id, ours.eot_token_id, ours.vocab_size) == (VOCAB - 2, VOCAB - 1, VOCAB)
  np.testing.assert_array_equal(
    tokenizer.get(f"hf:{tok_dir}", 32)(TEXTS), [reference(t, 32) for t in TEXTS]
  )
  assert (
    tokenizer.get(f"hf:{tok_dir}", 32).decode(want[0]) == "a photo of a woman smiling broadly ."
  )


def test_build_clip_is_deterministic_and_cli(tmp_path):
  tok = build_tokenizer.build_clip(LINES, VOCAB)
  assert tok.to_str() == build_tokenizer.build_clip(list(LINES), VOCAB).to_str()
  assert tok.get_vocab_size() == VOCAB
  assert tok.encode("a photo").ids[0] == VOCAB - 2 and tok.encode("a photo").ids[-1] == VOCAB - 1
  corpus = tmp_path / "captions.txt"
  corpus.write_text("\n".join(LINES[:25]) + "\n\n" + "\n".join(LINES[25:]) + "\n", encoding="utf-8")
  out = tmp_path / "cli"
  build_tokenizer.main(
    [
      "--clip_out",
      str(out),
      "--vocab_size",
      str(VOCAB),
      "--corpus",
      str(corpus),
      "--context_length",
      str(CONTEXT),
    ]
  )
  assert (out / "tokenizer.json").read_text(encoding="utf-8") == tok.to_str(pretty=True)
  with pytest.raises(FileExistsError, match=r"cli already holds \['vocab\.json'"):
    build_tokenizer.main(["--clip_out", str(out), "--corpus", str(corpus), "--vocab_size", "520"])
  with pytest.raises(ValueError, match=r"supports only \d+ BPE merges, fewer than the 3486"):
    build_tokenizer.build_clip(LINES, 4000)
  with pytest.raises(ValueError, match="below 514"):
    build_tokenizer.build_clip(LINES, 513)
  with pytest.raises(SystemExit):
    build_tokenizer.main(["--vocab_size", "600"])  # CLIP flags without --clip_out


# ------------------------------------------------------------------------------------------------
# (d) half-precision export
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,atol", [("bfloat16", 1e-2), ("float16", 2e-3)])
def test_half_precision_export(tmp_path, exported, tiny, tok_dir, dtype, atol):
  config, model, params = tiny
  out = export.save_hf(tmp_path / dtype, params, config, tokenizer_dir=tok_dir, dtype=dtype)
  ratio = (out / "model.safetensors").stat().st_size / (
    exported / "model.safetensors"
  ).stat().st_size
  assert 0.45 < ratio < 0.55, ratio
  stored = safetensors.numpy.load_file(str(out / "model.safetensors"))
  np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
  assert {v.dtype for v in stored.values()} == {np.dtype(np_dtype)}
  # Our loader: float32 params equal to the originals rounded to `dtype`.
  _, loaded = pretrained.load(f"hf:{out}")
  got = _flat(loaded)
  for key, value in _flat(params).items():
    assert got[key].dtype == np.float32
    np.testing.assert_array_equal(got[key], value.astype(np_dtype).astype(np.float32), err_msg=key)
  # transformers: loads (in float32 to measure the weights' rounding only) and tracks ours.
  pixels, tokens = _inputs(tok_dir)
  zimg, ztxt = _ours(model, params, pixels, tokens)
  ref_img, ref_txt, info, _ = _transformers(out, pixels, tokens, dtype=torch.float32)
  assert not any(info.values()), info
  np.testing.assert_allclose(ref_img, zimg, atol=atol, rtol=0)
  np.testing.assert_allclose(ref_txt, ztxt, atol=atol, rtol=0)
  assert json.loads((out / "config.json").read_text())["dtype"] == dtype


# ------------------------------------------------------------------------------------------------
# (e) bad inputs
# ------------------------------------------------------------------------------------------------
def _leftovers(parent: pathlib.Path) -> list[str]:
  return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_existing_folder_is_kept_unless_overwrite(tmp_path, monkeypatch, tiny, tok_dir):
  config, _, params = tiny
  out = tmp_path / "model"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match=rf"{out} is not empty \(notes\.txt\).*overwrite=True"):
    export.save_hf(out, params, config, tokenizer_dir=tok_dir)
  assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
  assert (out / "notes.txt").read_text() == "keep me"
  export.save_hf(out, params, config, tokenizer_dir=tok_dir, overwrite=True)
  assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
  assert _leftovers(tmp_path) == []
  # A failure while writing leaves the old folder as it was and no temporary folder.
  before = {p.name: p.read_bytes() for p in out.iterdir()}

  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(safetensors.numpy, "save_file", fail)
  with pytest.raises(OSError, match="disk full"):
    export.save_hf(out, params, config, overwrite=True)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert _leftovers(tmp_path) == []
  monkeypatch.undo()
  # An empty folder may be written into; a file is refused.
  (tmp_path / "empty").mkdir()
  export.save_hf(tmp_path / "empty", params, config)
  (tmp_path / "file").write_text("x")
  with pytest.raises(NotADirectoryError, match="file exists and is not a folder"):
    export.save_hf(tmp_path / "file", params, config)


def test_bad_params_and_configs_write_nothing(tmp_path, tiny, tok_dir):
  config, _, params = tiny
  out = tmp_path / "model"
  with pytest.raises(ValueError, match=r"\['heads'\] besides the CLIP towers"):
    export.save_hf(out, {**params, "heads": {"w": np.zeros(3)}}, config)
  broken = jax.tree.map(lambda p: p, params)
  broken["text"]["text_projection"] = np.zeros((32, 7), np.float32)
  with pytest.raises(
    ValueError, match=r"text/text_projection \(loaded \(32, 7\) vs model \(32, 32\)\)"
  ):
    export.save_hf(out, broken, config)
  del broken["text"]["text_projection"]
  with pytest.raises(ValueError, match=r"missing \(1\): text/text_projection"):
    export.save_hf(out, broken, config)
  with pytest.raises(ValueError, match="dtype='int8'"):
    export.save_hf(out, params, config, dtype="int8")
  other = config.copy_and_resolve_references()
  other.text_pooling, other.eos_token_id = "eos_id", 5
  with pytest.raises(
    ValueError, match=r"pools at eos_token_id=5 but tokenizer .* ends texts with 619"
  ):
    export.save_hf(out, params, other, tokenizer_dir=tok_dir)
  other.eos_token_id = 2
  with pytest.raises(ValueError, match="end-of-text id is 2"):
    export.hf_config(other)
  small = config.copy_and_resolve_references()
  small.vocab_size, small.eos_token_id = 600, 599
  with pytest.raises(ValueError, match="620 ids, more than the model's vocab_size=600"):
    export.hf_config(small, tok_dir)
  with pytest.raises(FileNotFoundError, match="nope"):
    export.save_hf(out, params, config, tokenizer_dir=tmp_path / "nope")
  huge = jax.tree.map(lambda p: p, params)
  huge["visual"]["proj"] = huge["visual"]["proj"].at[0, 0].set(1e6)
  with pytest.raises(ValueError, match=r"visual_projection\.weight holds .* beyond float16"):
    export.save_hf(out, huge, config, dtype="float16")
  assert not out.exists() and _leftovers(tmp_path) == []
