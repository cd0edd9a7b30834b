"""Builds the embedded tokenizer ``clef_jax/data/tokenizer.json`` (deterministic, offline).

A byte-level BPE (HF ``tokenizers``) trained on every prompt text of ``clef_jax.prompts`` plus the
English word list ``clef_jax/data/tokenizer_words.txt``. Texts are NFC-normalised, whitespace
collapsed, stripped and lower-cased (as CLIP does); the byte alphabet is complete, so there is
never an unknown token. Ids: ``<pad>`` = 0, then bytes and merges, then ``<|startoftext|>`` =
size - 2 and ``<|endoftext|>`` = size - 1 (the largest id, for argmax-of-ids pooling).

Usage:
  python tools/build_tokenizer.py [--out clef_jax/data/tokenizer.json] [--prompts FILE]
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=str(clef_tokenizer.EMBEDDED_PATH))
  parser.add_argument("--words", default=str(WORDS_PATH))
  parser.add_argument("--prompts", default=None, help="prompt data JSON (default: shipped)")
  args = parser.parse_args(argv)
  lines = corpus(args.words, args.prompts)
  tok = build(lines)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tok.save(str(out), pretty=True)
  print(
    f"wrote {out}: {tok.get_vocab_size()} ids, {out.stat().st_size} bytes, "
    f"trained on {len(lines)} lines"
  )


if __name__ == "__main__":
  main()
