"""Opening prepared datasets: random-access sources, their metadata, fold splits, SynthFace.

  src = sources.open_source("bp4d", "part1+part2", data_dir)   # tfds ArrayRecord data source
  src[0]["image"]        uint8 [S, S, 3] (decoded), strings as bytes, au int8 [J], ...
  sources.info("bp4d", data_dir)  # {'aus', 'classes', 'subjects', 'tasks', 'num_examples', ...}
  sources.fold_splits("bp4d", 1)  # ('part1+part2', 'part3')

Reading needs neither TensorFlow nor the builder code: the prepared folder
`<data_dir>/<name>/<config>/<version>/` is opened with `tfds.builder_from_directory`.

`data_dir` may be a `gs://` URL (every path here goes through etils.epath, see
input_pipeline.paths): TFDS reads the metadata through epath and ArrayRecord reads the records
with its own GCS client. Building a dataset needs local files (the readers, the generators and
TFDS's writers), so preparing into a remote data_dir builds in a local temporary folder and
uploads the finished dataset (`prepare`).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Sequence

import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import builders
from input_pipeline import paths
from input_pipeline import schema
from input_pipeline.readers import common
from input_pipeline.readers import folds

FER_DATASETS = ("raf_db", "ferplus", "affectnet")
SYNTHFACE_RAW = "synthface_raw"
SYNTHFACE_CONFIGS = ("bp4d", "raf")  # the parts every SynthFace user gets prepared
SYNTHFACE_PARTS = ("bp4d", "raf", "disfa")  # 'disfa' is prepared when a run asks for it
# The arguments of `synthface.generate` that decide its output, with the short names that tag the
# folders of a SynthFace generated with other values than the defaults (see synthface_config).
SYNTHFACE_ARGS = {
  "seed": "seed",
  "subjects": "subj",
  "frames_per_task": "fpt",
  "raf_train": "raftrain",
  "raf_test": "raftest",
  "size": "size",
  "disfa_subjects": "disfasubj",
  "disfa_frames": "disfafr",
}
SYNTHFACE_RUN_ARGS = ("progress", "workers")  # passed on to generate; the output does not vary
# SynthFace-Captions (the LAION-Face analog) is prepared as a user's manifest would be.
CAPTIONS_RAW = "synthface_captions_raw"
CAPTIONS_CONFIG = "synthface_captions_lm"  # aligned from the manifest's five landmarks


def dataset_dir(name: str, data_dir: str | os.PathLike[str], config: str | None = None) -> str:
  """`<data_dir>/<name>/<config>/<version>`: where the prepared dataset lives (or would)."""
  cfg = builders.make_config(name, config)
  version = str(builders.builder_class(name).VERSION)
  return os.fspath(epath.Path(data_dir) / name / cfg.name / version)


def is_prepared(name: str, data_dir: str | os.PathLike[str], config: str | None = None) -> bool:
  """True once preparation completed (TFDS renames the incomplete folder only at the end)."""
  return (epath.Path(dataset_dir(name, data_dir, config)) / "dataset_info.json").is_file()


def _prepared(
  name: str, data_dir: str | os.PathLike[str], config: str | None
) -> tfds.core.DatasetBuilder:
  path = dataset_dir(name, data_dir, config)
  if not (epath.Path(path) / "dataset_info.json").is_file():
    cfg = f" --config={config}" if config else ""
    parent = epath.Path(path).parent
    older = sorted(
      v.name
      for v in (parent.iterdir() if parent.is_dir() else [])
      if (v / "dataset_info.json").is_file()
    )
    hint = (
      f" (found version {', '.join(older)}, prepared by an older clef-jax; this code reads "
      f"{epath.Path(path).name}: prepare again, the old folder can then be deleted)"
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


def check_manual_dir(name: str, manual_dir: str | os.PathLike[str]) -> None:
  """Raises (FileNotFoundError, DatasetError) naming `manual_dir` and what dataset `name` expects
  there, when it is missing, not a folder or empty."""
  path = os.fspath(manual_dir)
  expects = " ".join(builders.builder_class(name).MANUAL_DOWNLOAD_INSTRUCTIONS.split())
  if paths.is_remote(path):
    raise common.DatasetError(
      path,
      "the dataset's own files are read from a local folder (copy them to the machine that "
      f"prepares; --data_dir may be gs://). {expects}",
    )
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: folder not found. {expects}")
  if not os.path.isdir(path):
    raise common.DatasetError(path, f"not a folder. {expects}")
  if not os.listdir(path):
    raise common.DatasetError(
      path, f"the folder is empty: nothing to prepare {name} from. {expects}"
    )


def prepare(
  name: str,
  manual_dir: str | os.PathLike[str],
  data_dir: str | os.PathLike[str],
  config: str | None = None,
  image_size: int | None = None,
  *,
  overwrite: bool = False,
) -> str:
  """Prepares one dataset from the user's folder and returns its folder (`dataset_dir`).

  A dataset already prepared is reused as it is, unless `overwrite`. The new dataset is built
  under a temporary data_dir beside it (`<data_dir>/.prepare.<name>.<config>.<random>/`) and
  moved to `<data_dir>/<name>/<config>/<version>` only once complete, replacing the old one
  there (if any) only then: a failure (a missing or empty `manual_dir`, a structural error in
  the data, Ctrl-C) leaves data_dir as it was, the old dataset intact and nothing half-written.

  A remote `data_dir` (gs://) has no rename: the dataset is built in a local temporary folder
  (its work dir too, so e.g. DISFA's extracted frames are not kept), and once complete the old
  one is deleted and the new one uploaded, `dataset_info.json` last, so a dataset whose upload
  was cut short is never taken for prepared (a rerun prepares it again).
  """
  cfg = builders.make_config(name, config, image_size)
  final = dataset_dir(name, data_dir, cfg.name)
  if is_prepared(name, data_dir, cfg.name) and not overwrite:
    return final
  check_manual_dir(name, manual_dir)
  remote = paths.is_remote(data_dir)
  paths.makedirs(data_dir, "data_dir")
  prefix = f".prepare.{name}.{cfg.name}."
  tmp = tempfile.mkdtemp(prefix=prefix, dir=None if remote else os.fspath(data_dir))
  try:
    # The work dir outlives the temporary build: e.g. DISFA's frames extracted from its videos.
    work_dir = os.path.join(tmp if remote else os.fspath(data_dir), "downloads")
    b = builders.builder(name, tmp, cfg.name, work_dir=work_dir)
    b.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
    )
    built = os.fspath(b.data_dir)  # <tmp>/<name>/<config>/<version>, complete
    if remote:
      paths.rmtree(final)
      paths.upload_tree(built, final, last="dataset_info.json")
      return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    old = os.path.join(tmp, "replaced")
    if os.path.exists(final):
      os.replace(final, old)  # kept until the new one is in place
    try:
      os.replace(built, final)
    except BaseException:
      if os.path.exists(old):
        os.replace(old, final)
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final


def synthface_config(part: str = "bp4d", *, image_size: int | None = None, **args: Any) -> str:
  """The prepared config name of SynthFace part `part` generated with `args` (those of
  `synthface.generate`: seed, subjects, frames_per_task, raf_train, raf_test, size).

  `part` is 'bp4d', 'raf' or 'disfa', optionally suffixed `_<N>px` (`image_size` overrides it). The
  default sizes keep the plain names ('bp4d', 'raf', as `--config` of the prepare command); any
  other values are tagged with them, e.g. 'bp4d_subj6_fpt6_raftrain64_raftest32_size32', so
  SynthFaces of several sizes live side by side in one data_dir.
  """
  m = re.fullmatch(r"(bp4d|raf|disfa)(_\d+px)?", part)
  if not m:
    raise ValueError(
      f"unknown SynthFace part {part!r}; known: {list(SYNTHFACE_PARTS)}, optionally suffixed "
      "_<N>px (the generator's sizes, config.data.synthface, name the prepared config)"
    )
  tag = _synthface_tag(_synthface_args(args))
  name = f"{m.group(1)}_{tag}" if tag else m.group(1)
  return builders.make_config("synthface", name + (m.group(2) or ""), image_size).name


def _synthface_defaults() -> dict[str, Any]:
  from input_pipeline import synthface  # pylint: disable=import-outside-toplevel

  params = inspect.signature(synthface.generate).parameters
  return {k: params[k].default for k in SYNTHFACE_ARGS}


def _synthface_args(args: dict[str, Any]) -> dict[str, int]:
  """All of SYNTHFACE_ARGS, `args` over the generator's defaults; a bad key or value is an error."""
  unknown = sorted(set(args) - set(SYNTHFACE_ARGS) - set(SYNTHFACE_RUN_ARGS))
  if unknown:
    raise ValueError(
      f"unknown SynthFace argument(s) {unknown}; known: {[*SYNTHFACE_ARGS, *SYNTHFACE_RUN_ARGS]}"
    )
  out = {k: args.get(k, v) for k, v in _synthface_defaults().items()}
  for k, v in out.items():
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ValueError(f"SynthFace argument {k}={v!r}: expected an integer >= 0")
  return out


def _synthface_tag(args: dict[str, int]) -> str:
  """'' for the generator's defaults, else the values that differ: 'seed1_subj3_size32'."""
  defaults = _synthface_defaults()
  return "_".join(f"{SYNTHFACE_ARGS[k]}{v}" for k, v in args.items() if v != defaults[k])


def ensure_synthface(
  data_dir: str | os.PathLike[str],
  *,
  seed: int = 0,
  image_size: int | None = None,
  parts: tuple[str, ...] = SYNTHFACE_CONFIGS,
  **sizes: Any,
) -> dict[str, str]:
  """Makes sure the SynthFace `parts` of these sizes (default 'bp4d' and 'raf'; 'disfa', the
  DISFA-like part, when asked) are prepared under data_dir; returns {config: path}, the configs
  named by `synthface_config`.

  If either is missing, runs the generator (`input_pipeline.synthface.generate(out, seed=seed,
  **sizes)`; sizes such as subjects, frames_per_task, raf_train, raf_test, size; progress and
  workers are passed on) into its raw folder and prepares the missing parts from it. Each set of
  sizes has its own raw folder and configs, so several coexist in one data_dir: the default
  sizes use `<data_dir>/synthface_raw` and configs 'bp4d', 'raf'; others
  `<data_dir>/synthface_raw_<tag>` and 'bp4d_<tag>', 'raf_<tag>' (tag e.g.
  'subj6_fpt6_raftrain64_raftest32_size32'). Prepared parts and a raw folder generated with the
  same arguments are reused; a raw folder holding another SynthFace (generated there by hand) is
  an error naming both argument sets; one written by an older generator version is generated
  again, and parts prepared from such a tree (metadata `synthface_version`) are prepared again. With a remote data_dir (gs://) the raw folder is generated in a local temporary folder,
  the missing parts are prepared from it into data_dir, and it is deleted.
  """
  data_dir = os.fspath(data_dir)
  wanted = _synthface_args({"seed": seed, **sizes})
  run_args = {k: sizes[k] for k in SYNTHFACE_RUN_ARGS if k in sizes}
  tag = _synthface_tag(wanted)
  configs = [synthface_config(c, image_size=image_size, **wanted) for c in parts]
  raw = os.fspath(epath.Path(data_dir) / (f"{SYNTHFACE_RAW}_{tag}" if tag else SYNTHFACE_RAW))
  summary_path = epath.Path(raw) / "synthface.json"
  from input_pipeline.synthface import writer  # pylint: disable=import-outside-toplevel

  have = None
  if summary_path.is_file():
    have = json.loads(summary_path.read_text(encoding="utf-8"))
    if have.get("version") != writer.VERSION:
      # Generated by an older clef-jax (e.g. 1.0: face crops, no landmarks): ours to remake.
      logging.warning(
        "%s holds SynthFace %s; this code generates %s: generating it again",
        raw,
        have.get("version"),
        writer.VERSION,
      )
      have = None
  if have is not None:
    diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
    if diff:
      prepared = ", ".join(dataset_dir("synthface", data_dir, c) for c in configs)
      raise ValueError(
        f"{raw}: holds a SynthFace generated with other arguments (have, wanted): {diff}; "
        f"delete {raw} and the prepared {prepared} to generate it again"
      )
  # Prepared from this generator version's tree, else prepared again (from a current tree).
  prepared = [c for c in configs if is_prepared("synthface", data_dir, c)]
  stale = [
    c for c in prepared if info("synthface", data_dir, c).get("synthface_version") != writer.VERSION
  ]
  if stale:
    logging.warning("SynthFace %s prepared from an older generator: preparing again", stale)
  missing = [c for c in configs if c not in prepared or c in stale]
  if missing and paths.is_remote(data_dir):
    from input_pipeline import synthface  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory(prefix="clef_synthface.") as local:
      local_raw = os.path.join(local, os.path.basename(raw))
      logging.info("generating SynthFace %s into %s (for %s)", wanted, local_raw, data_dir)
      synthface.generate(local_raw, **wanted, **run_args)
      for c in missing:
        prepare("synthface", local_raw, data_dir, c, overwrite=c in stale)
    missing = []
  if missing and have is None:
    from input_pipeline import synthface  # pylint: disable=import-outside-toplevel

    logging.info("generating SynthFace %s into %s", wanted, raw)
    synthface.generate(raw, overwrite=os.path.isdir(raw), **wanted, **run_args)
  for c in missing:
    prepare("synthface", raw, data_dir, c, overwrite=c in stale)
  return {c: dataset_dir("synthface", data_dir, c) for c in configs}


def ensure_synthface_captions(
  data_dir: str | os.PathLike[str], *, image_size: int | None = None, **args: Any
) -> str:
  """Makes sure SynthFace-Captions is prepared under data_dir (as the `manifest` dataset, config
  CAPTIONS_CONFIG); returns its path.

  If it is missing, runs `input_pipeline.synthface.captions.generate(raw, **args)` (seed,
  identities, images_per_identity, size, ...) into `<data_dir>/synthface_captions_raw` (reused
  when generated with the same arguments; other arguments are an error) and prepares it. With
  a remote data_dir the raw folder is generated in a local temporary folder and deleted after.
  """
  from input_pipeline.synthface import captions  # pylint: disable=import-outside-toplevel

  data_dir = os.fspath(data_dir)
  config = CAPTIONS_CONFIG
  if image_size and image_size != builders.DEFAULT_IMAGE_SIZE:
    config = f"{config}_{image_size}px"
  raw = os.fspath(epath.Path(data_dir) / CAPTIONS_RAW)
  summary_path = epath.Path(raw) / "captions.json"
  have, stale = None, False
  if summary_path.is_file():
    have = json.loads(summary_path.read_text(encoding="utf-8"))
    if have.get("version") != captions.VERSION:  # an older generator's corpus: made again
      logging.info(
        "%s: SynthFace-Captions %s is stale; generating %s",
        raw,
        have.get("version"),
        captions.VERSION,
      )
      have, stale = None, True
    else:
      flat = {**have, **{f"rate_{k}": v for k, v in have.get("rates", {}).items()}}
      diff = {k: (flat.get(k), v) for k, v in args.items() if k in flat and flat[k] != v}
      if diff:
        raise ValueError(
          f"{raw}: SynthFace-Captions was generated with other arguments (have, wanted): "
          f"{diff}; use another data_dir or delete {raw} and "
          f"{epath.Path(data_dir) / 'manifest' / config}"
        )
  if stale or not is_prepared("manifest", data_dir, config):
    with tempfile.TemporaryDirectory(prefix="clef_captions.") as local:
      if paths.is_remote(data_dir):  # generated and read locally, prepared into the bucket
        raw, have = os.path.join(local, CAPTIONS_RAW), None
      if have is None:
        rates = {k.removeprefix("rate_"): args.pop(k) for k in list(args) if k.startswith("rate_")}
        logging.info("generating SynthFace-Captions into %s", raw)
        summary = captions.generate(
          raw, overwrite=os.path.isdir(raw), rates=captions.Rates(**rates), **args
        )
        logging.info("%s", captions.describe(summary))
      prepare("manifest", raw, data_dir, config, overwrite=stale)
  return dataset_dir("manifest", data_dir, config)
