"""Opening prepared datasets: random-access sources, their metadata, fold splits, SynthFace.

  src = sources.open_source("bp4d", "part1+part2", data_dir)   # tfds ArrayRecord data source
  src[0]["image"]        uint8 [S, S, 3] (decoded), strings as bytes, au int8 [J], ...
  sources.info("bp4d", data_dir)  # {'aus', 'classes', 'subjects', 'tasks', 'num_examples', ...}
  sources.fold_splits("bp4d", 1)  # ('part1+part2', 'part3')

Reading needs neither TensorFlow nor the builder code: the prepared folder
`<data_dir>/<name>/<config>/<version>/` is opened with `tfds.builder_from_directory`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import tensorflow_datasets as tfds

from input_pipeline import builders
from input_pipeline import schema
from input_pipeline.readers import folds

FER_DATASETS = ("raf_db", "ferplus", "affectnet")
SYNTHFACE_RAW = "synthface_raw"
SYNTHFACE_CONFIGS = ("bp4d", "raf")
# SynthFace-Captions (the LAION-Face analog) is prepared as a user's manifest would be.
CAPTIONS_RAW = "synthface_captions_raw"
CAPTIONS_CONFIG = "synthface_captions"


def dataset_dir(name: str, data_dir: str | os.PathLike[str], config: str | None = None) -> str:
  """`<data_dir>/<name>/<config>/<version>`: where the prepared dataset lives (or would)."""
  cfg = builders.make_config(name, config)
  version = str(builders.builder_class(name).VERSION)
  return os.path.join(os.fspath(data_dir), name, cfg.name, version)


def is_prepared(name: str, data_dir: str | os.PathLike[str], config: str | None = None) -> bool:
  """True once preparation completed (TFDS renames the incomplete folder only at the end)."""
  return os.path.isfile(os.path.join(dataset_dir(name, data_dir, config), "dataset_info.json"))


def _prepared(
  name: str, data_dir: str | os.PathLike[str], config: str | None
) -> tfds.core.DatasetBuilder:
  path = dataset_dir(name, data_dir, config)
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    cfg = f" --config={config}" if config else ""
    parent = os.path.dirname(path)
    older = sorted(
      v
      for v in (os.listdir(parent) if os.path.isdir(parent) else [])
      if os.path.isfile(os.path.join(parent, v, "dataset_info.json"))
    )
    hint = (
      f" (found version {', '.join(older)}, prepared by an older clef-jax; this code reads "
      f"{os.path.basename(path)}: prepare again, the old folder can then be deleted)"
      if older
      else ""
    )
    raise FileNotFoundError(
      f"{path}: dataset {name} is not prepared under {os.fspath(data_dir)}{hint}; run `python -m "
      f"input_pipeline.prepare --dataset={name}{cfg} --manual_dir=<your {name} folder> "
      f"--data_dir={os.fspath(data_dir)}`"
    )
  b = tfds.builder_from_directory(path)
  # The label schema it was prepared with must be this code's: expression ids are stored.
  schema.check(dict(b.info.metadata or {}), path, aus=builders.expected_aus(name, config))
  return b


def open_source(
  name: str,
  split: str,
  data_dir: str | os.PathLike[str],
  config: str | None = None,
  *,
  decode_images: bool = True,
) -> Sequence[dict]:
  """A random-access source (len, getitem) over `split` of a prepared dataset.

  `split` follows TFDS syntax, including arithmetic ('part1+part2', 'train[:10%]'). Images come
  decoded to uint8 [S, S, 3]; with decode_images=False they stay JPEG bytes (the grain pipeline
  decodes either). Text fields are bytes.
  """
  b = _prepared(name, data_dir, config)
  try:
    if decode_images:
      return b.as_data_source(split)
    return b.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  except (KeyError, ValueError) as e:
    raise ValueError(
      f"{dataset_dir(name, data_dir, config)}: cannot open split {split!r} "
      f"(available: {sorted(b.info.splits)}): {e}"
    ) from None


def info(name: str, data_dir: str | os.PathLike[str], config: str | None = None) -> dict[str, Any]:
  """Metadata of a prepared dataset, without reading its examples.

  Keys: aus (AU numbers of the `au` vector), classes (expression names the dataset uses),
  expressions (the canonical index space of `expression`), subjects, tasks, activities
  {task: text}, parts {k: subjects}, skips {reason: count}, stats per split, image_size,
  options, num_examples {split: n}, path, schema_version.

  Opening (here and in open_source) checks the stored label schema against
  input_pipeline.schema (`schema.check`): a dataset prepared with another expression order or AU
  list is a ValueError naming its path.
  """
  b = _prepared(name, data_dir, config)
  out = dict(b.info.metadata or {})
  path = dataset_dir(name, data_dir, config)
  for key, default in (("aus", []), ("classes", []), ("subjects", []), ("tasks", [])):
    out.setdefault(key, default)
  out["num_examples"] = {s: int(v.num_examples) for s, v in b.info.splits.items()}
  out["path"] = path
  return out


def fold_splits(name: str, fold: int, num_parts: int = 3) -> tuple[str, str]:
  """(train split, test split) of evaluation fold `fold`: fold 1 -> ('part1+part2', 'part3')."""
  if name in FER_DATASETS:
    raise ValueError(f"{name} has no subject folds; use its 'train' and 'test' splits")
  builders.builder_class(name)  # a clear KeyError for an unknown name
  train = "+".join(f"part{p}" for p in folds.train_parts(fold, num_parts))
  return train, f"part{folds.test_part(fold, num_parts)}"


def prepare(
  name: str,
  manual_dir: str | os.PathLike[str],
  data_dir: str | os.PathLike[str],
  config: str | None = None,
  image_size: int | None = None,
) -> tfds.core.DatasetBuilder:
  """Prepares one dataset (no-op if already prepared) and returns its builder."""
  b = builders.builder(name, data_dir, config, image_size)
  if not os.path.exists(manual_dir):
    raise FileNotFoundError(
      f"{os.fspath(manual_dir)}: folder not found. "
      f"{' '.join(b.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}"
    )
  b.download_and_prepare(
    file_format="array_record",
    download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
  )
  return b


def ensure_synthface(
  data_dir: str | os.PathLike[str], *, seed: int = 0, image_size: int | None = None, **sizes: Any
) -> dict[str, str]:
  """Makes sure both SynthFace parts are prepared under data_dir; returns {config: path}.

  If either is missing, runs the generator (`input_pipeline.synthface.generate(out, seed=seed,
  **sizes)`; sizes such as subjects, frames_per_task, raf_train, raf_test, size) into
  `<data_dir>/synthface_raw` (reused if it was generated with the same arguments) and prepares
  the missing parts from it. Prepared parts are reused as they are; a raw tree generated with
  other arguments is an error (use another data_dir or delete it).
  """
  data_dir = os.fspath(data_dir)
  configs = [
    c if not image_size or image_size == builders.DEFAULT_IMAGE_SIZE else f"{c}_{image_size}px"
    for c in SYNTHFACE_CONFIGS
  ]
  raw = os.path.join(data_dir, SYNTHFACE_RAW)
  summary_path = os.path.join(raw, "synthface.json")
  wanted = {"seed": seed, **sizes}
  have = None
  if os.path.isfile(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      have = json.load(f)
    diff = {k: (have.get(k), v) for k, v in wanted.items() if k in have and have[k] != v}
    if diff:
      raise ValueError(
        f"{raw}: SynthFace was generated with other arguments "
        f"(have, wanted): {diff}; use another data_dir or delete {raw} and the "
        f"prepared {os.path.join(data_dir, 'synthface')}"
      )
  missing = [c for c in configs if not is_prepared("synthface", data_dir, c)]
  if missing and have is None:
    from input_pipeline import synthface  # pylint: disable=import-outside-toplevel

    logging.info("generating SynthFace (seed %d) into %s", seed, raw)
    synthface.generate(raw, seed=seed, overwrite=os.path.isdir(raw), **sizes)
  for c in missing:
    prepare("synthface", raw, data_dir, c)
  return {c: dataset_dir("synthface", data_dir, c) for c in configs}


def ensure_synthface_captions(
  data_dir: str | os.PathLike[str], *, image_size: int | None = None, **args: Any
) -> str:
  """Makes sure SynthFace-Captions is prepared under data_dir (as the `manifest` dataset, config
  CAPTIONS_CONFIG); returns its path.

  If it is missing, runs `input_pipeline.synthface.captions.generate(raw, **args)` (seed,
  identities, images_per_identity, size, ...) into `<data_dir>/synthface_captions_raw` (reused
  when generated with the same arguments; other arguments are an error) and prepares it.
  """
  data_dir = os.fspath(data_dir)
  config = CAPTIONS_CONFIG
  if image_size and image_size != builders.DEFAULT_IMAGE_SIZE:
    config = f"{config}_{image_size}px"
  raw = os.path.join(data_dir, CAPTIONS_RAW)
  summary_path = os.path.join(raw, "captions.json")
  have = None
  if os.path.isfile(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      have = json.load(f)
    flat = {**have, **{f"rate_{k}": v for k, v in have.get("rates", {}).items()}}
    diff = {k: (flat.get(k), v) for k, v in args.items() if k in flat and flat[k] != v}
    if diff:
      raise ValueError(
        f"{raw}: SynthFace-Captions was generated with other arguments (have, wanted): {diff}; "
        f"use another data_dir or delete {raw} and {os.path.join(data_dir, 'manifest', config)}"
      )
  if not is_prepared("manifest", data_dir, config):
    if have is None:
      from input_pipeline.synthface import captions  # pylint: disable=import-outside-toplevel

      rates = {k.removeprefix("rate_"): args.pop(k) for k in list(args) if k.startswith("rate_")}
      logging.info("generating SynthFace-Captions into %s", raw)
      summary = captions.generate(
        raw, overwrite=os.path.isdir(raw), rates=captions.Rates(**rates), **args
      )
      logging.info("%s", captions.describe(summary))
    prepare("manifest", raw, data_dir, config)
  return dataset_dir("manifest", data_dir, config)
