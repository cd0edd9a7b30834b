"""Builds the embedded tokenizer ``clef_jax/data/tokenizer.json`` (deterministic, offline).

A byte-level BPE (HF ``tokenizers``) trained on every prompt text of ``clef_jax.prompts`` plus the
English word list ``clef_jax/data/tokenizer_words.txt``. Texts are NFC-normalised, whitespace
collapsed, stripped and lower-cased (as CLIP does); the byte alphabet is complete, so there is
never an unknown token. Ids: ``<pad>`` = 0, then bytes and merges, then ``<|startoftext|>`` =
size - 2 and ``<|endoftext|>`` = size - 1 (the largest id, for argmax-of-ids pooling).

It also builds tokenizers in OpenAI CLIP's own format (``build_clip``, ``save_clip_folder``,
``--clip_out``): a folder of ``vocab.json`` + ``merges.txt`` (plus ``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) that ``transformers.CLIPTokenizer`` and
``clef_jax.tokenizer.get('hf:DIR')`` read, for models exported with ``clef_jax.export.save_hf``.

Usage:
  python tools/build_tokenizer.py [--out clef_jax/data/tokenizer.json] [--prompts FILE]
  python tools/build_tokenizer.py --clip_out DIR [--vocab_size N] [--context_length L]
      [--corpus FILE ...] [--overwrite]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clef_jax import prompts  # pylint: disable=g-import-not-at-top
from clef_jax import tokenizer as clef_tokenizer  # pylint: disable=g-import-not-at-top

WORDS_PATH = clef_tokenizer.EMBEDDED_PATH.parent / "tokenizer_words.txt"
_WORDS_PER_LINE = 16


def read_words(path: str | pathlib.Path = WORDS_PATH) -> list[str]:
  """Words of the word-list file, in file order ('#' lines are comments)."""
  words = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.lstrip().startswith("#"):
        words += line.split()
  if not words:
    raise ValueError(f"{path}: word list is empty")
  return words


def corpus(
  words_path: str | pathlib.Path = WORDS_PATH, prompts_path: str | None = None
) -> list[str]:
  """Training lines: every prompt text, then the word list in lines of 16 words."""
  words = read_words(words_path)
  lines = [" ".join(words[i : i + _WORDS_PER_LINE]) for i in range(0, len(words), _WORDS_PER_LINE)]
  return prompts.all_texts(prompts_path) + lines


def build(
  lines: list[str], vocab_size: int = clef_tokenizer.EMBEDDED_VOCAB_SIZE
) -> tokenizers.Tokenizer:
  """A byte-level BPE of exactly ``vocab_size`` ids trained on ``lines``."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.Sequence(
    [
      normalizers.NFC(),
      normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
      normalizers.Strip(),
      normalizers.Lowercase(),
    ]
  )
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size - 2,  # SOT and EOT are appended after training.
    min_frequency=0,
    special_tokens=[clef_tokenizer.PAD_TOKEN],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(lines, trainer)
  if tok.get_vocab_size() != vocab_size - 2:
    raise ValueError(
      f"the corpus ({len(lines)} lines) supports only {tok.get_vocab_size()} "
      f"BPE ids, fewer than {vocab_size - 2}: add words to {WORDS_PATH}"
    )
  tok.add_special_tokens([clef_tokenizer.SOT_TOKEN, clef_tokenizer.EOT_TOKEN])
  sot, eot = clef_tokenizer.SOT_TOKEN, clef_tokenizer.EOT_TOKEN
  ids = {t: tok.token_to_id(t) for t in (clef_tokenizer.PAD_TOKEN, sot, eot)}
  if ids != {clef_tokenizer.PAD_TOKEN: 0, sot: vocab_size - 2, eot: vocab_size - 1}:
    raise ValueError(f"unexpected special ids {ids} for vocab_size {vocab_size}")
  tok.post_processor = processors.TemplateProcessing(
    single=f"{sot} $A {eot}",
    pair=f"{sot} $A {eot} $B {eot}",
    special_tokens=[(sot, ids[sot]), (eot, ids[eot])],
  )
  return tok


# --------------------------------------------------------------------------------------------- #
# OpenAI CLIP format (vocab.json + merges.txt)
# --------------------------------------------------------------------------------------------- #
CLIP_MIN_VOCAB_SIZE = 2 * 256 + 2  # the bytes, the bytes + '</w>', SOT and EOT.
_CLIP_SUFFIX = "</w>"
# OpenAI CLIP's word pattern (simple_tokenizer.py; transformers' CLIPTokenizer uses the same).
_CLIP_PATTERN = (
  r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
CLIP_FILES = (
  "vocab.json",
  "merges.txt",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
)


@functools.cache
def _bytes_to_unicode() -> tuple[str, ...]:
  """The 256 byte characters of GPT-2/CLIP's byte-level alphabet, in CLIP's vocab order.

  Printable bytes map to themselves and come first (in byte order), the others map to
  chr(256 + n) and follow; this is the order of ids 0..255 in OpenAI CLIP's vocabulary.
  """
  bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return tuple(chr(c) for c in cs)


def _clip_pipeline(tok: tokenizers.Tokenizer) -> None:
  """Sets transformers' CLIP normaliser, pre-tokeniser and decoder (see CLIPConverter)."""
  tok.normalizer = normalizers.Sequence(
    [
      normalizers.NFC(),
      normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
      normalizers.Lowercase(),
    ]
  )
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(tokenizers.Regex(_CLIP_PATTERN), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False),
    ]
  )
  tok.decoder = decoders.ByteLevel()


def _trained_merges(lines: list[str], vocab_size: int) -> list[tuple[str, str]]:
  """BPE merges (in rank order) learnt on `lines` with CLIP's pipeline and '</w>' suffix."""
  trainer_tok = tokenizers.Tokenizer(models.BPE(end_of_word_suffix=_CLIP_SUFFIX))
  _clip_pipeline(trainer_tok)
  trainer = trainers.BpeTrainer(
    # Its vocab counts its alphabet (at most the 512 base tokens) and every merge result, so
    # vocab_size - 2 leaves room for at least the vocab_size - 514 new tokens needed.
    vocab_size=vocab_size - 2,
    min_frequency=0,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    end_of_word_suffix=_CLIP_SUFFIX,
    show_progress=False,
  )
  trainer_tok.train_from_iterator(lines, trainer)
  merges = json.loads(trainer_tok.to_str())["model"]["merges"]
  return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def build_clip(lines: list[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A BPE tokenizer in OpenAI CLIP's format, trained on `lines` (deterministic).

  Texts are NFC-normalised, whitespace-collapsed and lower-cased, split with CLIP's word
  pattern, mapped to byte characters (ByteLevel) and merged with a BPE whose word-final tokens
  end in '</w>'. Ids are laid out as CLIP's: the 256 byte characters (ids 0..255), the same
  + '</w>' (256..511), the merge results in rank order, then `<|startoftext|>` = vocab_size - 2
  and `<|endoftext|>` = vocab_size - 1 (also the unknown and, in the saved folder, the padding
  token). Every byte is a token, so no text needs the unknown token. `tok.encode(text).ids`
  is `[sot, ..., eot]`; `tok.decode` leaves '</w>' in (transformers replaces it with spaces).

  Args:
    lines: training texts.
    vocab_size: number of ids, >= CLIP_MIN_VOCAB_SIZE (514).

  Raises:
    ValueError: bad arguments, or `lines` too small to learn vocab_size - 514 merges.
  """
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
    raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
  if vocab_size < CLIP_MIN_VOCAB_SIZE:
    raise ValueError(
      f"vocab_size={vocab_size} is below {CLIP_MIN_VOCAB_SIZE} (256 bytes, 256 bytes + '</w>', "
      "SOT and EOT)"
    )
  lines = list(lines)
  for i, line in enumerate(lines):
    if not isinstance(line, str):
      raise TypeError(f"training line {i} is {type(line).__name__}, not str: {line!r}")
  if not any(line.strip() for line in lines):
    raise ValueError(f"no training text: {len(lines)} line(s), all empty")
  chars = _bytes_to_unicode()
  tokens = [*chars, *(c + _CLIP_SUFFIX for c in chars)]
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = []
  for a, b in _trained_merges(lines, vocab_size):
    if len(vocab) == vocab_size - 2:
      break
    merges.append((a, b))
    vocab.setdefault(a + b, len(vocab))  # a merge may rebuild a token an earlier one made
  if len(vocab) != vocab_size - 2:
    raise ValueError(
      f"the corpus ({len(lines)} lines) supports only {len(vocab) - 512} BPE merges, fewer "
      f"than the {vocab_size - CLIP_MIN_VOCAB_SIZE} that vocab_size={vocab_size} needs: "
      "add text or lower vocab_size"
    )
  sot, eot = clef_tokenizer.SOT_TOKEN, clef_tokenizer.EOT_TOKEN
  vocab[sot], vocab[eot] = vocab_size - 2, vocab_size - 1
  tok = tokenizers.Tokenizer(
    models.BPE(
      vocab=vocab,
      merges=merges,
      continuing_subword_prefix="",
      end_of_word_suffix=_CLIP_SUFFIX,
      fuse_unk=False,
      unk_token=eot,
    )
  )
  _clip_pipeline(tok)
  tok.add_special_tokens([sot, eot])
  tok.post_processor = processors.RobertaProcessing(
    (eot, vocab_size - 1), (sot, vocab_size - 2), trim_offsets=False, add_prefix_space=False
  )
  return tok


def _clip_model(tok: tokenizers.Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """(vocab, merges) of a `build_clip` tokenizer, checked to be in CLIP's layout."""
  model = json.loads(tok.to_str())["model"]
  if model.get("type") != "BPE" or model.get("end_of_word_suffix") != _CLIP_SUFFIX:
    raise ValueError(
      "not a CLIP-format tokenizer (a BPE with end_of_word_suffix '</w>'); use build_clip"
    )
  vocab = model["vocab"]
  sot, eot = clef_tokenizer.SOT_TOKEN, clef_tokenizer.EOT_TOKEN
  size = len(vocab)
  if sorted(vocab.values()) != list(range(size)) or (vocab.get(sot), vocab.get(eot)) != (
    size - 2,
    size - 1,
  ):
    raise ValueError(
      f"not a CLIP-format vocabulary: ids must be 0..{size - 1} with {sot} = {size - 2} and "
      f"{eot} = {size - 1}, got {sot} = {vocab.get(sot)}, {eot} = {vocab.get(eot)}"
    )
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  return vocab, merges


def save_clip_folder(
  tok: tokenizers.Tokenizer,
  out_dir: str | pathlib.Path,
  context_length: int,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes a `build_clip` tokenizer as a transformers CLIP tokenizer folder.

  Files (see CLIP_FILES): vocab.json and merges.txt (OpenAI CLIP's format, read by every
  transformers version), tokenizer.json (the same tokenizer for the `tokenizers` library),
  tokenizer_config.json (CLIPTokenizer, model_max_length=context_length) and
  special_tokens_map.json (bos <|startoftext|>; eos, unk and pad <|endoftext|>, as HF CLIP).

  Args:
    tok: from `build_clip`.
    out_dir: folder to write (created with its parents).
    context_length: model_max_length of the folder (the text tower's context length).
    overwrite: replace files of CLIP_FILES already in out_dir (otherwise FileExistsError).

  Returns:
    out_dir as a Path.
  """
  if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
    raise ValueError(
      f"context_length must be an int >= 2 (room for SOT and EOT), got {context_length!r}"
    )
  vocab, merges = _clip_model(tok)
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise NotADirectoryError(f"{out} exists and is not a folder")
  present = [name for name in CLIP_FILES if (out / name).exists()]
  if present and not overwrite:
    raise FileExistsError(f"{out} already holds {present}; pass overwrite=True to replace them")
  sot, eot = clef_tokenizer.SOT_TOKEN, clef_tokenizer.EOT_TOKEN
  special = {"bos_token": sot, "eos_token": eot, "unk_token": eot, "pad_token": eot}
  config = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": context_length,
    "do_lower_case": True,
    "errors": "replace",
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
    **special,
  }
  vocab_text = json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False)
  files = {
    "vocab.json": vocab_text + "\n",
    "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
    "tokenizer.json": tok.to_str(pretty=True),
    "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
    "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
  }
  out.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    tmp = out / f".{name}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out / name)
  return out


def read_corpus_files(paths: list[str]) -> list[str]:
  """Non-blank lines (stripped) of UTF-8 text files, in order."""
  lines = []
  for path in paths:
    try:
      with open(path, encoding="utf-8") as f:
        got = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f"cannot read corpus file {path}: {e}") from e
    if not got:
      raise ValueError(f"corpus file {path} has no text")
    lines += got
  return lines


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=str(clef_tokenizer.EMBEDDED_PATH))
  parser.add_argument("--words", default=str(WORDS_PATH))
  parser.add_argument("--prompts", default=None, help="prompt data JSON (default: shipped)")
  clip = parser.add_argument_group("CLIP-format folder (instead of the embedded tokenizer)")
  clip.add_argument("--clip_out", default=None, help="write a CLIP tokenizer folder here")
  clip.add_argument("--vocab_size", type=int, default=None, help="ids (default 4096)")
  clip.add_argument("--context_length", type=int, default=None, help="model_max_length (77)")
  clip.add_argument(
    "--corpus",
    nargs="+",
    default=None,
    help="text files, one text a line (default: prompts + words)",
  )
  clip.add_argument(
    "--overwrite", action="store_true", help="replace tokenizer files in --clip_out"
  )
  args = parser.parse_args(argv)
  if args.clip_out is None:
    given = [f"--{k}" for k in ("vocab_size", "context_length", "corpus") if getattr(args, k)]
    if given or args.overwrite:
      parser.error(f"{given + ['--overwrite'] * args.overwrite} need --clip_out")
    lines = corpus(args.words, args.prompts)
    tok = build(lines)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=True)
    print(
      f"wrote {out}: {tok.get_vocab_size()} ids, {out.stat().st_size} bytes, "
      f"trained on {len(lines)} lines"
    )
    return
  lines = read_corpus_files(args.corpus) if args.corpus else corpus(args.words, args.prompts)
  tok = build_clip(lines, args.vocab_size or clef_tokenizer.EMBEDDED_VOCAB_SIZE)
  out = save_clip_folder(tok, args.clip_out, args.context_length or 77, overwrite=args.overwrite)
  print(f"wrote {out}: CLIP tokenizer of {tok.get_vocab_size()} ids, trained on {len(lines)} lines")


if __name__ == "__main__":
  main()
