"""From config.data to sources, label vocabularies and grain iterators for the training loop.

This is the one place where the trainer meets the input pipeline: it resolves the data folder,
prepares SynthFace on first use, picks the splits of the fold (with the leakage guard), builds
the subject/task vocabularies and activity texts, and returns random-access sources.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

import numpy as np

from input_pipeline import paths
from input_pipeline import pipeline
from input_pipeline import sampler as sampler_lib
from input_pipeline import schema
from input_pipeline import sources

LABEL_KEYS = (
  "subject",
  "task",
  "activity_text",
  "frame",
  "fold",
  "expression",
  "au",
  "au_intensity",
)
NUMERIC_BATCH_KEYS = (
  "image",
  "colour",  # colour draws still to apply on device (data.augment.colour_on_device)
  "au",
  "au_intensity",
  "expression",
  "expression/votes",
  "subject_id",
  "activity_id",
  "index",
  "mask",
  "label",
  "tokens",
)


def data_dir(config) -> str:
  """config.data.data_dir, else $CLEF_DATA_DIR, else ./data: a local path made absolute, or a
  gs:// URL as it is."""
  return paths.text(config.data.data_dir or os.environ.get("CLEF_DATA_DIR", "") or "./data")


class Subset:
  """A random-access view of `source` restricted to `indices` (in that order)."""

  def __init__(self, source: Any, indices: Sequence[int]):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int):
    return self.source[int(self.indices[i])]

  def __repr__(self) -> str:
    return f"Subset({len(self)} of {len(self.source)})"


@dataclasses.dataclass
class Data:
  """What the trainer and evaluators need to know about the configured dataset."""

  name: str
  builder_config: str
  data_dir: str
  info: dict[str, Any]
  train_split: str
  test_split: str
  train: Any  # random-access source (possibly a Subset)
  test: Any
  train_table: dict[str, np.ndarray]
  subjects: list[str]
  tasks: list[str]
  activity_texts: list[str]  # index = activity id
  aus: list[int]
  classes: list[str]  # canonical expression names present in the dataset


def _splits(config, info) -> tuple[str, str]:
  name = config.data.name
  train, test = config.data.train_split, config.data.test_split
  splits = list(info.get("num_examples", {}))
  if not train or not test:
    if any(s.startswith("part") for s in splits):
      ftrain, ftest = sources.fold_splits(name, config.fold)
      if config.mode == "pretrain" and not config.data.leakage_guard:
        ftrain = "+".join(sorted(s for s in splits if s.startswith("part")))
      train, test = train or ftrain, test or ftest
    else:
      train, test = train or "train", test or "test"
  return train, test


def setup(config) -> Data:
  """Opens the configured dataset (preparing SynthFace first if it is the one and absent)."""
  ddir = data_dir(config)
  name, bconf = config.data.name, config.data.config or None
  if name == "synthface":
    # 'bp4d' / 'raf' name the part; the sizes name its prepared config ('bp4d' at the defaults).
    sizes = config.data.synthface.to_dict()
    part = bconf or sources.SYNTHFACE_CONFIGS[0]
    bconf = sources.synthface_config(part, **sizes)
    parts = tuple(dict.fromkeys((*sources.SYNTHFACE_CONFIGS, part.split("_")[0])))
    sources.ensure_synthface(ddir, parts=parts, **sizes)
  elif name == "manifest" and bconf == sources.CAPTIONS_CONFIG:
    sources.ensure_synthface_captions(ddir, **config.data.captions.to_dict())
  info = sources.info(name, ddir, config=bconf)
  train_split, test_split = _splits(config, info)
  # Images stay JPEG bytes: the grain pipeline decodes them (in its workers), and scanning the
  # labels below does not pay for decoding.
  train = sources.open_source(name, train_split, ddir, config=bconf, decode_images=False)
  test = sources.open_source(name, test_split, ddir, config=bconf, decode_images=False)
  if len(train) == 0:
    raise ValueError(f"dataset {name}/{bconf} split {train_split!r} in {ddir} is empty")
  table = pipeline.label_table(train, LABEL_KEYS)
  tasks = list(info.get("tasks") or pipeline.vocab(table["task"]))
  subjects = list(info.get("subjects") or pipeline.vocab(table["subject"]))
  texts = {}
  for t, a in zip(table["task"], table["activity_text"]):
    if t and a:
      texts.setdefault(str(t), str(a))
  activity_texts = [texts.get(t, "") for t in tasks] if texts else []
  used = sorted(set(str(s) for s in table["subject"]))
  logging.info(
    "data: %s/%s from %s; train=%s (%d examples, %d subjects: %s), test=%s (%d)",
    name,
    bconf,
    ddir,
    train_split,
    len(train),
    len(used),
    " ".join(used),
    test_split,
    len(test),
  )
  return Data(
    name=name,
    builder_config=bconf or "",
    data_dir=ddir,
    info=info,
    train_split=train_split,
    test_split=test_split,
    train=train,
    test=test,
    train_table=table,
    subjects=subjects,
    tasks=tasks,
    activity_texts=activity_texts,
    aus=list(info.get("aus") or []),
    classes=list(info.get("classes") or []),
  )


def restrict(data: Data, indices: np.ndarray) -> Data:
  """The same Data with the training source restricted to `indices` of it."""
  table = {k: v[indices] for k, v in data.train_table.items()}
  return dataclasses.replace(data, train=Subset(data.train, indices), train_table=table)


class WithColumns:
  """`source[i]` plus per-example arrays: `{**source[i], key: columns[key][i]}`."""

  def __init__(self, source: Any, columns: dict[str, np.ndarray]):
    for k, v in columns.items():
      if len(v) != len(source):
        raise ValueError(f"column {k!r} has {len(v)} rows for a source of {len(source)}")
    self.source, self.columns = source, columns

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int):
    return {**self.source[i], **{k: v[i] for k, v in self.columns.items()}}

  def __repr__(self) -> str:
    return f"WithColumns({self.source!r}, {sorted(self.columns)})"


def with_caption_tokens(data: Data, tok) -> Data:
  """The training examples that have a caption, each with its `tokens` [L] int32.

  Examples with an empty caption are left out, and captions longer than the tokenizer's
  context are truncated (keeping SOT and EOT); both are counted and logged with example paths.
  """
  table = pipeline.label_table(data.train, ("caption", "image/path"))
  captions = table["caption"]
  keep = np.flatnonzero(np.char.str_len(captions.astype(str)) > 0)
  if not len(keep):
    raise ValueError(
      f"dataset {data.name}/{data.builder_config} split {data.train_split!r} has no captions: "
      "the foundation objective needs a `caption` column in the manifest"
    )
  if len(keep) < len(captions):
    empty = np.setdiff1d(np.arange(len(captions)), keep)
    logging.warning(
      "captions: %d of %d training examples have an empty caption and are left out, e.g. %s",
      len(empty),
      len(captions),
      ", ".join(str(p) for p in table["image/path"][empty[:5]]),
    )
  texts = [str(c) for c in captions[keep]]
  lengths = tok.lengths(texts)
  long = np.flatnonzero(lengths > tok.context_length)
  if len(long):
    logging.warning(
      "captions: %d of %d are longer than the context (%d tokens) and were truncated, e.g. %s",
      len(long),
      len(texts),
      tok.context_length,
      ", ".join(f"{table['image/path'][keep[i]]} ({lengths[i]} tokens)" for i in long[:5]),
    )
  logging.info(
    "captions: %d training pairs, %.1f tokens on average, %d truncated",
    len(texts),
    float(np.mean(np.minimum(lengths, tok.context_length))),
    len(long),
  )
  data = restrict(data, keep) if len(keep) < len(captions) else data
  data.train_table["caption_truncated"] = lengths > tok.context_length
  return dataclasses.replace(data, train=WithColumns(data.train, {"tokens": tok(texts)}))


def for_finetune(config, data: Data) -> Data:
  """The training examples a fine-tuning run uses: the `finetune.classes` subset (FER) and a
  seeded `data.label_fraction` share of them (label-scarce runs)."""
  fc = config.finetune
  keep = np.ones(len(data.train), bool)
  if fc.task == "fer" and fc.classes:
    unknown = [c for c in fc.classes if c not in data.classes]
    if unknown:
      raise ValueError(
        f"config.finetune.classes {unknown} are not classes of {data.name} ({data.classes})"
      )
    names = schema.expressions()
    keep &= np.isin(data.train_table["expression"], [names.index(c) for c in fc.classes])
  fraction = config.data.label_fraction
  if not 0 < fraction <= 1:
    raise ValueError(f"config.data.label_fraction={fraction}: expected (0, 1]")
  idx = np.flatnonzero(keep)
  if fraction < 1:
    n = max(1, int(round(len(idx) * fraction)))
    idx = np.sort(np.random.default_rng(config.seed).choice(idx, n, replace=False))
  if len(idx) == len(data.train):
    return data
  logging.info("fine-tuning on %d of %d training examples", len(idx), len(data.train))
  return restrict(data, idx)


def make_sampler(config, data: Data) -> sampler_lib.ActivityBatchSampler:
  sc = config.data.sampler
  t = data.train_table
  activities, frames = pipeline.to_ids(t["task"], data.tasks), t["frame"]
  if config.mode == "foundation":
    # Image-caption pairs have no activity: the "groups" are people, and each batch holds
    # `subjects_per_activity` people x `frames_per_group` of their photos, so a caption must be
    # told from the captions of other photos of the same person (hard negatives).
    activities, frames = np.zeros(len(t["subject"]), np.int32), np.arange(len(t["subject"]))
  return sampler_lib.ActivityBatchSampler(
    pipeline.to_ids(t["subject"], data.subjects),
    activities,
    frames,
    activities_per_batch=sc.activities_per_batch,
    subjects_per_activity=sc.subjects_per_activity,
    frames_per_group=sc.frames_per_group,
    min_frame_gap=sc.min_frame_gap,
    seed=config.seed,
  )


def train_iterator(config, data: Data, keys: Sequence[str], source: Any | None = None):
  """The checkpointable grain iterator of per-process training batches."""
  sampler = make_sampler(config, data) if config.data.sampler.enabled else None
  return pipeline.make_train_iterator(
    data.train if source is None else source,
    global_batch_size=config.batch_size,
    seed=config.seed,
    image_size=config.model.image_size,
    augment=config.data.augment.to_dict(),
    two_views=config.data.two_views,
    subjects=data.subjects,
    tasks=data.tasks,
    keys=tuple(keys),
    worker_count=config.data.worker_count,
    sampler=sampler,
    cache_mb=config.data.cache_mb,
  )


def eval_batches(
  config, data: Data, source: Any, keys: Sequence[str], batch_size: int | None = None
):
  return pipeline.make_eval_batches(
    source,
    global_batch_size=batch_size or config.batch_size,
    image_size=config.model.image_size,
    keys=tuple(keys),
    subjects=data.subjects,
    tasks=data.tasks,
  )
