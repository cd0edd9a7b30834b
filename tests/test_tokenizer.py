"""Tests of clef_jax.tokenizer against transformers' CLIPTokenizerFast and a pure-Python BPE."""

import functools
import importlib.util
import json
import pathlib
import unicodedata

import numpy as np
import pytest
import regex
import transformers

from clef_jax import prompts
from clef_jax import tokenizer

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_GPT2_PATTERN = regex.compile(
  r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2/CLIP's reversible byte -> printable character table."""
  bs = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("¡"), ord("¬") + 1))
    + list(range(ord("®"), ord("ÿ") + 1))
  )
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _clip_clean(text: str) -> str:
  """CLIP-style cleaning: NFC, whitespace runs -> one space, stripped, lower-cased."""
  return " ".join(unicodedata.normalize("NFC", text).split()).lower()


# ------------------------------------------------------------------------------------------------
# HF CLIP folder: a hand-written CLIP-format vocabulary.
# ------------------------------------------------------------------------------------------------

_MERGES = [
  "p h",
  "ph o",
  "pho t",
  "phot o</w>",
  "o f</w>",
  "f a",
  "fa c",
  "fac e</w>",
  "s m",
  "i l",
  "sm il",
  "smil e</w>",
  "t h",
  "th e</w>",
  "w i",
  "t h</w>",
  "wi th</w>",
]
_HF_TEXTS = [
  "A photo of a face.",
  "",
  "  the SMILE\twith\n teeth ",
  "photo 2024 of a phóto, ok?",
  " ".join(["a smile with the face"] * 6),
  "face",
]


def _write_clip_vocab(folder: pathlib.Path) -> dict[str, int]:
  """CLIP's layout: bytes, bytes + '</w>', merge results, then SOT and EOT."""
  chars = list(_bytes_to_unicode().values())
  tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in _MERGES]
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  vocab = {t: i for i, t in enumerate(tokens)}
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  (folder / "merges.txt").write_text(
    "#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8"
  )
  return vocab


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> tuple[pathlib.Path, dict[str, int]]:
  folder = tmp_path_factory.mktemp("clip_tok")
  return folder, _write_clip_vocab(folder)


@pytest.mark.parametrize("context_length", [77, 8])
@pytest.mark.parametrize("prefix", ["", "hf:"])
def test_hf_folder_matches_transformers(clip_dir, context_length, prefix):
  folder, _ = clip_dir
  tok = tokenizer.get(f"{prefix}{folder}", context_length)
  ref = transformers.CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)
  want = ref(_HF_TEXTS, padding="max_length", max_length=context_length, truncation=True)[
    "input_ids"
  ]
  got = tok(_HF_TEXTS)
  assert got.dtype == np.int32 and got.shape == (len(_HF_TEXTS), context_length)
  np.testing.assert_array_equal(got, np.array(want))
  assert (tok.sot_token_id, tok.eot_token_id) == (ref.bos_token_id, ref.eos_token_id)
  assert tok.pad_token_id == ref.pad_token_id and tok.vocab_size == len(ref)


def test_hf_folder_hand_computed_ids(clip_dir):
  folder, v = clip_dir
  tok = tokenizer.get(str(folder), context_length=10)
  sot, eot = v["<|startoftext|>"], v["<|endoftext|>"]
  assert (tok.sot_token_id, tok.eot_token_id, tok.pad_token_id) == (sot, eot, eot)
  assert tok.vocab_size == 512 + len(_MERGES) + 2
  row = [
    sot,
    v["a</w>"],
    v["photo</w>"],
    v["of</w>"],
    v["a</w>"],
    v["face</w>"],
    v[".</w>"],
    eot,
    eot,
    eot,
  ]
  np.testing.assert_array_equal(tok("A photo of a face."), [row])
  # Too long: SOT, the first 8 tokens, EOT.
  words = ["the</w>", "smile</w>", "with</w>", "the</w>"] * 3
  np.testing.assert_array_equal(
    tok(" ".join(["the smile with the"] * 3)), [[sot] + [v[w] for w in words[:8]] + [eot]]
  )
  assert tok.decode(row) == "a photo of a face ."


def test_hf_tokenizer_json_folder(clip_dir, tmp_path):
  folder, _ = clip_dir
  ref = transformers.CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)
  ref.save_pretrained(str(tmp_path))
  for name in ("vocab.json", "merges.txt"):
    (tmp_path / name).unlink(missing_ok=True)
  assert (tmp_path / "tokenizer.json").is_file()
  got = tokenizer.get(f"hf:{tmp_path}", 12)(_HF_TEXTS)
  want = ref(_HF_TEXTS, padding="max_length", max_length=12, truncation=True)["input_ids"]
  np.testing.assert_array_equal(got, np.array(want))


def test_bad_specs(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match=r"nope.*does not exist.*vocab\.json"):
    tokenizer.get(str(missing))
  (tmp_path / "only_vocab").mkdir()
  (tmp_path / "only_vocab" / "vocab.json").write_text("{}")
  with pytest.raises(
    FileNotFoundError, match=r"only_vocab has no HF tokenizer files.*merges\.txt.*tokenizer\.json"
  ):
    tokenizer.get(f"hf:{tmp_path / 'only_vocab'}")
  with pytest.raises(ValueError, match="context_length must be >= 2"):
    tokenizer.get("embedded", context_length=1)
  with pytest.raises(TypeError, match="spec must be a str"):
    tokenizer.get(None)


# ------------------------------------------------------------------------------------------------
# Embedded tokenizer.
# ------------------------------------------------------------------------------------------------


def _reference_bpe(text: str, model: dict) -> list[int]:
  """Plain GPT-2 byte-level BPE (lowest-rank merge first) over the committed vocab and merges."""
  b2u = _bytes_to_unicode()
  if "_ranks" not in model:
    model["_merges"] = [
      tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]
    ]
    model["_ranks"] = {m: i for i, m in enumerate(model["_merges"])}
  merges, ranks = model["_merges"], model["_ranks"]
  ids = []
  for piece in _GPT2_PATTERN.findall(" " + _clip_clean(text)):
    word = [b2u[b] for b in piece.encode("utf-8")]
    while len(word) > 1:
      pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(word, word[1:]))]
      rank, _ = min(pairs)
      if rank == len(ranks):
        break
      a, b = merges[rank]
      out, i = [], 0
      while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
          out.append(a + b)
          i += 2
        else:
          out.append(word[i])
          i += 1
      word = out
    ids += [model["vocab"][t] for t in word]
  return ids


@pytest.fixture(scope="module")
def prompt_texts() -> list[str]:
  return prompts.all_texts()


def test_embedded_file_and_special_ids():
  size = tokenizer.EMBEDDED_VOCAB_SIZE
  assert tokenizer.EMBEDDED_PATH.stat().st_size < 1_000_000
  for spec in ("", "embedded"):
    tok = tokenizer.get(spec)
    assert (tok.vocab_size, tok.context_length, tok.spec) == (size, 77, "embedded")
    assert (tok.pad_token_id, tok.sot_token_id, tok.eot_token_id) == (0, size - 2, size - 1)
  model = json.loads(tokenizer.EMBEDDED_PATH.read_text(encoding="utf-8"))
  assert model["model"]["unk_token"] is None
  # Every byte is a token of its own: no text can need an unknown token.
  assert set(_bytes_to_unicode().values()) <= set(model["model"]["vocab"])


def test_embedded_matches_reference_bpe_and_round_trips(prompt_texts):
  model = json.loads(tokenizer.EMBEDDED_PATH.read_text(encoding="utf-8"))["model"]
  tok = tokenizer.get(context_length=128)
  extra = ["Ünïcode café — 😀 中文  \t tabs", "<|endoftext|> is text here", "AU12 + AU6 = 100%"]
  texts = prompt_texts + extra
  ids = tok(texts)
  size = tokenizer.EMBEDDED_VOCAB_SIZE
  want = np.zeros_like(ids)
  for i, text in enumerate(texts):
    n = _reference_bpe(text, model)
    want[i, : len(n) + 2] = [size - 2, *n, size - 1]
  np.testing.assert_array_equal(ids, want)
  assert [tok.decode(row) for row in ids] == [_clip_clean(t) for t in texts]
  # OpenAI-style pooling: argmax of the ids is the EOT position.
  eot_pos = (ids != 0).sum(1) - 1
  np.testing.assert_array_equal(ids.argmax(1), eot_pos)
  assert (ids.max(1) == size - 1).all()


def test_embedded_prompts_fit_default_context(prompt_texts):
  ids = tokenizer.get()(prompt_texts)
  assert ids.shape == (len(prompt_texts), 77) and ids.dtype == np.int32
  assert (ids[:, -1] == 0).all()  # no prompt text is truncated at 77


def test_embedded_truncation_keeps_eot_last():
  text = " ".join(f"the {w} eyebrows are raised" for w in ("inner", "outer") * 20)
  full = tokenizer.get(context_length=1024)(text)[0]
  n = int((full != 0).sum())
  assert n > 16
  for length in (2, 3, 16):
    row = tokenizer.get(context_length=length)(text)[0]
    size = tokenizer.EMBEDDED_VOCAB_SIZE
    np.testing.assert_array_equal(row, np.r_[size - 2, full[1 : length - 1], size - 1])


def test_embedded_inputs():
  tok = tokenizer.get(context_length=6)
  size = tokenizer.EMBEDDED_VOCAB_SIZE
  np.testing.assert_array_equal(tok(""), [[size - 2, size - 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(tok("  \n "), [[size - 2, size - 1, 0, 0, 0, 0]])
  assert tok([]).shape == (0, 6) and tok([]).dtype == np.int32
  np.testing.assert_array_equal(tok(("Smile", "smile ")), tok(["SMILE"] * 2))
  np.testing.assert_array_equal(tok(np.array(["a", "b"])), tok(["a", "b"]))
  with pytest.raises(TypeError, match="index 1 is int"):
    tok(["fine", 3])
  with pytest.raises(ValueError, match="id 4096 at position 1"):
    tok.decode([1, 4096])
  with pytest.raises(ValueError, match="1-D"):
    tok.decode(tok(["a", "b"]))


def test_embedded_rebuild_is_identical(tmp_path):
  spec = importlib.util.spec_from_file_location(
    "build_tokenizer", _ROOT / "tools" / "build_tokenizer.py"
  )
  build_tokenizer = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(build_tokenizer)
  out = tmp_path / "tokenizer.json"
  build_tokenizer.main(["--out", str(out)])
  rebuilt = json.loads(out.read_text(encoding="utf-8"))
  committed = json.loads(tokenizer.EMBEDDED_PATH.read_text(encoding="utf-8"))
  assert rebuilt["model"]["vocab"] == committed["model"]["vocab"]
  assert rebuilt["model"]["merges"] == committed["model"]["merges"]
  assert rebuilt["added_tokens"] == committed["added_tokens"]
  for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
    assert rebuilt[key] == committed[key], key
