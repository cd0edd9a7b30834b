"""Text tokenizers: the embedded offline one, and HF (CLIP/FaRL) vocabularies from a folder.

``get(spec, context_length)`` returns a ``Tokenizer``; calling it on a text or a list of texts
gives ``[N, context_length] int32`` ids laid out as OpenAI CLIP does: start-of-text, the text's
tokens, end-of-text, then padding. Too long texts are cut so that the row still starts with SOT
and ends with EOT. EOT is the largest id of the vocabulary, so "argmax of the token ids" pooling
in the text tower finds it.

Specs:
  ``""`` or ``"embedded"``: the byte-level BPE shipped in ``clef_jax/data/tokenizer.json``
    (``EMBEDDED_VOCAB_SIZE`` ids; pad = 0, sot = size - 2, eot = size - 1), trained by
    ``tools/build_tokenizer.py`` on the prompt texts and an English word list. Byte-level, so
    no text ever maps to an unknown token; texts are NFC-normalised, whitespace-collapsed,
    stripped and lower-cased first, as CLIP does.
  ``"hf:DIR"`` or ``"DIR"``: a folder with HF tokenizer files (CLIP's ``vocab.json`` +
    ``merges.txt``, or ``tokenizer.json``), read with ``transformers.CLIPTokenizerFast`` from
    local files only. A folder holding the embedded tokenizer's ``tokenizer.json`` (what
    ``clef_jax.export`` writes for a run that used it) is run as the embedded one. Ids equal ``CLIPTokenizerFast(texts, padding='max_length',
    max_length=context_length, truncation=True)``; its pad id is CLIP's EOT id.
"""

from __future__ import annotations

import abc
import atexit
import functools
import os
import pathlib
import shutil
import tempfile
from typing import Sequence

import numpy as np
import tokenizers

from input_pipeline import paths

EMBEDDED_VOCAB_SIZE = 4096
EMBEDDED_PATH = pathlib.Path(__file__).parent / "data" / "tokenizer.json"
PAD_TOKEN = "<pad>"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
PAD_ID = 0
SOT_ID = EMBEDDED_VOCAB_SIZE - 2
EOT_ID = EMBEDDED_VOCAB_SIZE - 1

_HF_FILE_SETS = (("vocab.json", "merges.txt"), ("tokenizer.json",))
_HF_EXPECTED = "CLIP's vocab.json + merges.txt, or tokenizer.json"


class Tokenizer(abc.ABC):
  """Texts -> ``[N, context_length] int32`` ids (SOT, tokens, EOT, padding).

  Attributes:
    spec: the spec it was made from (``"embedded"`` or the folder path).
    context_length: row length L of the output.
    vocab_size: number of ids (all ids are < vocab_size).
    sot_token_id, eot_token_id, pad_token_id: special ids.
  """

  spec: str
  context_length: int
  vocab_size: int
  sot_token_id: int
  eot_token_id: int
  pad_token_id: int

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    """Tokenizes one text or a sequence of texts into ``[N, context_length] int32``."""
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"tokenizer input at index {i} is {type(t).__name__}, not str: {t!r}")
    if not texts:
      return np.zeros((0, self.context_length), np.int32)
    return self._encode(texts)

  def lengths(self, texts: Sequence[str]) -> np.ndarray:
    """int [N]: the untruncated token count of each text, SOT and EOT included (a row of
    ``__call__`` keeps at most ``context_length`` of them)."""
    texts = list(texts)
    if not texts:
      return np.zeros((0,), np.int64)
    return np.asarray(self._lengths(texts), np.int64)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of one row of ids; special and padding tokens are left out."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
      raise ValueError(
        f"decode expects a 1-D sequence of int ids, got shape {ids.shape} dtype {ids.dtype}"
      )
    bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
    if bad.size:
      raise ValueError(
        f"decode: id {int(ids[bad[0]])} at position {int(bad[0])} is outside "
        f"[0, {self.vocab_size}) of tokenizer {self.spec!r}"
      )
    return self._decode([int(i) for i in ids])

  def __repr__(self) -> str:
    return (
      f"{type(self).__name__}(spec={self.spec!r}, vocab_size={self.vocab_size}, "
      f"context_length={self.context_length})"
    )

  @abc.abstractmethod
  def _encode(self, texts: list[str]) -> np.ndarray:
    """Non-empty list of str -> ``[N, context_length] int32``."""

  @abc.abstractmethod
  def _decode(self, ids: list[int]) -> str:
    """In-range ids -> text."""

  @abc.abstractmethod
  def _lengths(self, texts: list[str]) -> list[int]:
    """Non-empty list of str -> untruncated lengths (SOT and EOT included)."""


class _Embedded(Tokenizer):
  """The shipped byte-level BPE, run by the ``tokenizers`` library."""

  def __init__(self, path: pathlib.Path, context_length: int):
    try:
      tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception on bad files.
      raise ValueError(
        f"cannot read embedded tokenizer {path}: {e} "
        "(rebuild it with `python tools/build_tokenizer.py`)"
      ) from None
    expected = {PAD_TOKEN: PAD_ID, SOT_TOKEN: SOT_ID, EOT_TOKEN: EOT_ID}
    got = {t: tok.token_to_id(t) for t in expected}
    if tok.get_vocab_size() != EMBEDDED_VOCAB_SIZE or got != expected:
      raise ValueError(
        f"{path}: expected {EMBEDDED_VOCAB_SIZE} ids with special ids "
        f"{expected}, found {tok.get_vocab_size()} ids and {got} "
        "(rebuild it with `python tools/build_tokenizer.py`)"
      )
    # Special-token strings inside a text are plain text, not ids.
    tok.encode_special_tokens = True
    # The file's post-processor adds SOT/EOT; truncation keeps room for both.
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=PAD_ID, pad_token=PAD_TOKEN)
    self._tok = tok
    self.spec = "embedded" if path == EMBEDDED_PATH else str(path.parent)
    self.context_length = context_length
    self.vocab_size = EMBEDDED_VOCAB_SIZE
    self.sot_token_id, self.eot_token_id, self.pad_token_id = SOT_ID, EOT_ID, PAD_ID

  def _encode(self, texts: list[str]) -> np.ndarray:
    encodings = self._tok.encode_batch_fast(texts)
    return np.array([e.ids for e in encodings], np.int32)

  def _lengths(self, texts: list[str]) -> list[int]:
    self._tok.no_truncation()
    self._tok.no_padding()
    try:
      return [len(e.ids) for e in self._tok.encode_batch_fast(texts)]
    finally:
      self._tok.enable_truncation(max_length=self.context_length)
      self._tok.enable_padding(length=self.context_length, pad_id=PAD_ID, pad_token=PAD_TOKEN)

  def _decode(self, ids: list[int]) -> str:
    text = self._tok.decode(ids, skip_special_tokens=True)
    # Byte-level BPE with add_prefix_space: the first word carries a space of its own.
    return text[1:] if text.startswith(" ") else text


class _HF(Tokenizer):
  """A CLIP-style HF tokenizer folder, run by ``transformers.CLIPTokenizerFast``."""

  def __init__(self, folder: pathlib.Path, context_length: int):
    import transformers  # Heavy import; only HF folders need it.

    try:
      tok = transformers.CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
      raise ValueError(
        f"cannot load HF tokenizer from {folder} (expected {_HF_EXPECTED}): {type(e).__name__}: {e}"
      ) from e
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
      if getattr(tok, name) is None:
        raise ValueError(f"HF tokenizer in {folder} has no {name.removesuffix('_id')}")
    self._tok = tok
    self.spec = str(folder)
    self.context_length = context_length
    self.vocab_size = len(tok)
    self.sot_token_id = int(tok.bos_token_id)
    self.eot_token_id = int(tok.eos_token_id)
    self.pad_token_id = int(tok.pad_token_id)

  def _encode(self, texts: list[str]) -> np.ndarray:
    out = self._tok(
      texts,
      padding="max_length",
      max_length=self.context_length,
      truncation=True,
      return_tensors="np",
    )
    return np.asarray(out["input_ids"], np.int32)

  def _decode(self, ids: list[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=True)

  def _lengths(self, texts: list[str]) -> list[int]:
    out = self._tok(texts, truncation=False, add_special_tokens=True, verbose=False)
    return [len(ids) for ids in out["input_ids"]]


@functools.cache
def _local_copy(url: str, spec: str) -> str:
  """The files of the remote folder `url` (gs://) copied into a local temporary folder (removed
  at exit), for tokenizer libraries that read local files only."""
  src = paths.path(url)
  if not src.is_dir():
    raise FileNotFoundError(f"tokenizer spec {spec!r}: {url} does not exist")
  local = tempfile.mkdtemp(prefix="clef_tokenizer.")
  atexit.register(shutil.rmtree, local, ignore_errors=True)
  for f in src.iterdir():
    if f.is_file():
      (pathlib.Path(local) / f.name).write_bytes(f.read_bytes())
  return local


def _hf_folder(spec: str) -> pathlib.Path:
  where = spec.removeprefix("hf:")
  if paths.is_remote(where):
    where = _local_copy(where, spec)
  folder = pathlib.Path(os.path.expanduser(where))
  if not folder.is_dir():
    what = "is not a folder" if folder.exists() else "does not exist"
    raise FileNotFoundError(
      f"tokenizer spec {spec!r}: {folder} {what}; expected 'embedded' or a folder with "
      f"{_HF_EXPECTED}"
    )
  if not any(all((folder / f).is_file() for f in files) for files in _HF_FILE_SETS):
    present = sorted(p.name for p in folder.iterdir())[:20]
    raise FileNotFoundError(
      f"tokenizer folder {folder} has no HF tokenizer files: expected {_HF_EXPECTED}; "
      f"found {present}"
    )
  return folder


def get(spec: str = "embedded", context_length: int = 77) -> Tokenizer:
  """The tokenizer named by ``spec`` (see the module docstring), padding to ``context_length``.

  Args:
    spec: ``""``/``"embedded"``, or a folder with HF tokenizer files, optionally ``hf:``-prefixed.
    context_length: row length L of the ids (>= 2: room for SOT and EOT).

  Returns:
    A ``Tokenizer``; ``tok(texts)`` is ``[N, L] int32``.
  """
  if not isinstance(spec, str):
    raise TypeError(f"tokenizer spec must be a str, got {type(spec).__name__}: {spec!r}")
  if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
    raise TypeError(f"context_length must be an int, got {context_length!r}")
  if context_length < 2:
    raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
  context_length = int(context_length)
  if spec in ("", "embedded"):
    if not EMBEDDED_PATH.is_file():
      raise FileNotFoundError(
        f"embedded tokenizer file missing: {EMBEDDED_PATH} "
        "(rebuild it with `python tools/build_tokenizer.py`)"
      )
    return _Embedded(EMBEDDED_PATH, context_length)
  folder = _hf_folder(spec)
  if is_embedded_layout(folder):
    return _Embedded(folder / "tokenizer.json", context_length)
  return _HF(folder, context_length)


def is_embedded_layout(folder: str | os.PathLike) -> bool:
  """Whether a folder holds the embedded tokenizer's file as exported by clef_jax.export (a
  `tokenizer.json` with its pad/SOT/EOT ids, no CLIP vocab.json), which CLIPTokenizerFast
  cannot run (it has no unknown token); transformers reads it with AutoTokenizer."""
  folder = pathlib.Path(folder)
  path = folder / "tokenizer.json"
  if (folder / "vocab.json").is_file() or not path.is_file():
    return False
  try:
    vocab = tokenizers.Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
  except Exception:  # pylint: disable=broad-except  (tokenizers raises plain Exception)
    return False
  return (
    len(vocab) == EMBEDDED_VOCAB_SIZE
    and vocab.get(PAD_TOKEN) == PAD_ID
    and vocab.get(SOT_TOKEN) == SOT_ID
    and vocab.get(EOT_TOKEN) == EOT_ID
  )
