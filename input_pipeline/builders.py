"""TFDS builders for every dataset: the user's folder (manual_dir) -> ArrayRecord splits.

Builders (registered TFDS names): bp4d, bp4d_plus, disfa, raf_db, ferplus, affectnet, synthface,
manifest. Each one runs the dataset's reader (input_pipeline.readers) once over the user's
folder, resizes every face to `image_size` (shorter side, then a centre crop; default 112) and
stores it JPEG-encoded (quality 95) with the common schema:

  image [S, S, 3] uint8 (JPEG) | image/path, subject, task, activity_text, caption: Text
  frame, expression, fold: int32 | au, au_intensity: int8 [J] | expression/votes: float32 [8]

Splits. AU datasets (bp4d, bp4d_plus, disfa, synthface/bp4d, a manifest with a `fold` column):
one split per subject part, `part1`, `part2`, `part3`; evaluation fold f trains on
`folds.train_parts(f)` and tests on `folds.test_part(f)` (`sources.fold_splits`), e.g. fold 1 =
'part1+part2' vs 'part3' (TFDS split arithmetic works with tfds.data_source). FER datasets:
`train` / `test` (+ `validation` for FER+; AffectNet's validation set is its `test`).

Metadata (`builder.info.metadata`, saved with the dataset): aus, classes (the expression names
the dataset uses, canonical order), expressions (the canonical index space) and schema_version
(input_pipeline.schema, checked when the dataset is opened), subjects, tasks,
activities {task: text}, parts {k: subjects}, skips {reason: count}, stats per split
(examples, expression histogram [8], AU positives / known [J]), caption_stats {'captions': stored
examples with a caption, 'empty': those kept with an empty one in a source with captions,
'empty_lines': their first 20 manifest lines}, image_size, reader options.

Versions (RELEASE_NOTES): a dataset prepared by another VERSION lives in another
`<version>/` folder, which `sources` does not open: prepare it again.

Configs: a name from BUILDER_CONFIGS (e.g. affectnet '7class'), optionally suffixed
`_<N>px` for another image size ('7class_224px'); bp4d_plus also takes 'seed<N>' (seed of its
subject-exclusive 3-fold split); synthface also takes 'bp4d_<tag>' / 'raf_<tag>' (the part of a
SynthFace generated with other sizes, named by `sources.synthface_config`). `make_config(name,
config)` builds them.

Preparation writes into TFDS's `<version>.incomplete.<random>` folder and renames it to
`<version>` only after every split and dataset_info.json are written; on an exception the
incomplete folder is deleted. A dataset counts as prepared only when `<version>/` exists.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import os
import pickle
import re
import shutil
import tempfile
from typing import Any, Iterator

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from input_pipeline import align as align_lib
from input_pipeline import readers
from input_pipeline import schema
from input_pipeline.readers import common
from input_pipeline.readers import landmarks as landmarks_lib

DEFAULT_IMAGE_SIZE = 112
JPEG_QUALITY = 95
VERSION = tfds.core.Version("1.2.0")
AU_KIND, FER_KIND = "au", "fer"
SKIP_NO_PART = "subject in no part of the fold split"
SKIP_NO_FACE = "no face found by the detector"
SKIP_BAD_LANDMARKS = "landmarks that define no alignment (points collapse)"

# Face alignment modes (FaceConfig.align; prepare --align): the config-name suffix of a
# non-default one, and what it does.
ALIGN_MODES = {
  "landmarks": "lm",  # the dataset's own landmarks; frames without them skipped and counted
  "landmarks_or_detector": "lmdet",  # ... frames without them aligned from the detector
  "detector": "det",  # the detector's five keypoints for every image (align.Detector)
  "none": "noalign",  # no alignment: shorter side resized, centre crop
}
_ALIGN_BY_SUFFIX = {v: k for k, v in ALIGN_MODES.items()}


def resize_face(image: np.ndarray, size: int) -> np.ndarray:
  """Shorter side to `size` (bicubic), then a centre crop: uint8 [H, W, 3] -> uint8 [S, S, 3]."""
  h, w = image.shape[:2]
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  im = Image.fromarray(image)
  if (nh, nw) != (h, w):
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
  top, left = (nh - size) // 2, (nw - size) // 2
  return np.asarray(im.crop((left, top, left + size, top + size)).convert("RGB"))


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """uint8 [H, W, 3] -> JPEG bytes."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


@dataclasses.dataclass(eq=False)
class FaceConfig(tfds.core.BuilderConfig):
  """A builder variant: reader options and the stored face size."""

  image_size: int = DEFAULT_IMAGE_SIZE
  options: tuple[tuple[str, Any], ...] = ()
  align: str = "none"  # ALIGN_MODES
  align_margin: float = align_lib.DEFAULT_MARGIN


_SIZE_RE = re.compile(r"^(.+)_(\d+)px$")
_ALIGN_RE = re.compile(r"^(.+?)(?:_(lm|lmdet|det|noalign))?(?:_m(\d+))?$")


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What a builder (under its config) reads: reader module name, kind, subfolder, splits."""

  reader: str
  kind: str
  subdir: str = ""
  splits: tuple[str, ...] = ()  # FER: reader splits to read; AU: routed by `fold`


class _FaceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery: one reader pass, spilled per split, then written by TFDS."""

  VERSION = VERSION
  RELEASE_NOTES = {
    "1.0.0": "First release: common schema, faces resized and JPEG-encoded.",
    "1.1.0": "caption (Text) in every example; metadata caption_stats.",
    "1.2.0": "Faces aligned (dataset landmarks or a detector) by default where they exist.",
  }
  BUILDER_CONFIGS = [FaceConfig(name="default")]
  # How faces are aligned unless the config name says otherwise (ALIGN_MODES).
  DEFAULT_ALIGN = "none"

  @classmethod
  def default_align(cls, base: str) -> str:
    """The alignment mode of the config `base` (a config name without suffixes)."""
    return cls.DEFAULT_ALIGN

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS derives this from the package via importlib_resources, which is not a dependency
    # here; the builders live in this file (no checksums.tsv next to it: nothing downloads).
    return epath.Path(__file__)

  @classmethod
  def spec(cls, config: str) -> _Spec:
    """What the builder reads under the config named `config`."""
    raise TypeError(f"{cls.__name__} must define spec()")

  @classmethod
  def expected_aus(cls, config: str) -> list[int] | None:
    """The AU numbers of the `au` vector under `config`, or None where the data decides."""
    spec = cls.spec(config)
    return list(readers.get(spec.reader).AUS) if spec.kind == AU_KIND else []

  def _spec(self) -> _Spec:
    return type(self).spec(self.builder_config.name)

  def _options(self) -> dict[str, Any]:
    return dict(self.builder_config.options)

  def _reader_kwargs(self) -> dict[str, Any]:
    """What the reader gets: the config's options (+ machine-specific ones, not in metadata)."""
    if self._alignment.align in ("landmarks", "landmarks_or_detector"):
      return {**self._options(), "landmarks": True}
    return self._options()

  @functools.cached_property
  def _alignment(self) -> FaceConfig:
    """The config with its alignment fields (TFDS hands class configs, e.g. 'default', as they
    are declared, without the dataset's alignment default)."""
    return make_config(self.name, self.builder_config.name)

  def _face(self, ex: dict[str, Any], skips: common.Skips) -> np.ndarray | None:
    """The stored face of an example: aligned (by the config's mode) or resized; None = skip."""
    cfg = self._alignment
    size, mode, margin = cfg.image_size, cfg.align, cfg.align_margin
    points = ex.pop("landmarks", None)
    scheme = ex.pop("landmark_scheme", "")
    if mode == "none":
      return resize_face(ex["image"], size)
    if mode != "detector" and points is not None:
      try:
        return align_lib.align(ex["image"], points, scheme, size, margin)
      except ValueError:
        skips.add(SKIP_BAD_LANDMARKS, ex["image/path"])
        return None
    if mode == "landmarks":
      skips.add(landmarks_lib.SKIP_NO_LANDMARKS, ex["image/path"])
      return None
    if getattr(self, "_detector", None) is None:
      self._detector = align_lib.Detector()
    found = self._detector.align(ex["image"], size, margin)
    if found is None:
      skips.add(SKIP_NO_FACE, ex["image/path"])
      return None
    return found[0]

  def _num_aus(self) -> int | None:
    """J of the au vectors, or None where the data decides (manifest)."""
    aus = self.expected_aus(self.builder_config.name)
    return None if aus is None else len(aus)

  def _aus(self, root: str) -> list[int]:
    return list(self.expected_aus(self.builder_config.name) or [])

  def _classes(self) -> list[str]:
    spec = self._spec()
    if spec.kind != FER_KIND:
      return []
    module = readers.get(spec.reader)
    used = set(module.TO_CANONICAL)
    if dict(self._options()).get("num_classes") == 7:
      used.discard(schema.expression_index("contempt"))
    return [e for i, e in enumerate(schema.EXPRESSIONS) if i in used]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    j = self._num_aus()
    shape = (None,) if j is None else (j,)
    features = tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
        "image/path": tfds.features.Text(),
        "subject": tfds.features.Text(),
        "task": tfds.features.Text(),
        "activity_text": tfds.features.Text(),
        "frame": tfds.features.Scalar(dtype=np.int32),
        "au": tfds.features.Tensor(shape=shape, dtype=np.int8),
        "au_intensity": tfds.features.Tensor(shape=shape, dtype=np.int8),
        "expression": tfds.features.Scalar(dtype=np.int32),
        "expression/votes": tfds.features.Tensor(shape=(common.NUM_EXPRESSIONS,), dtype=np.float32),
        "fold": tfds.features.Scalar(dtype=np.int32),
        "caption": tfds.features.Text(),
      }
    )
    return tfds.core.DatasetInfo(
      builder=self,
      description=(type(self).__doc__ or "").strip(),
      features=features,
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  # -- reading -----------------------------------------------------------------------------------

  def _root(self, manual_dir: str) -> str:
    root = os.path.join(manual_dir, self._spec().subdir) if self._spec().subdir else manual_dir
    if not os.path.isdir(root) and not os.path.isfile(root):
      raise common.DatasetError(root, "dataset folder not found; see MANUAL_DOWNLOAD_INSTRUCTIONS")
    return root

  def _read_all(
    self, root: str, skips: common.Skips, captions: common.CaptionStats
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split name, example) over the whole dataset, in reader order.

    Counts skipped items in `skips` and, for a source with captions, the kept examples'
    captions in `captions` (the dataset readers have none).
    """
    del captions
    spec = self._spec()
    module = readers.get(spec.reader)
    if spec.kind == FER_KIND:
      for split in spec.splits:
        for ex in module.read(root, split=split, skips=skips, **self._reader_kwargs()):
          yield split, ex
      return
    for ex in module.read(root, skips=skips, **self._reader_kwargs()):
      if ex["fold"] <= 0:
        skips.add(SKIP_NO_PART, ex["subject"])
        continue
      yield f"part{ex['fold']}", ex

  def _source_metadata(self, manual_dir: str) -> dict[str, Any]:
    """Metadata of the source folder itself, stored with the dataset (none by default)."""
    return {}

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    self.info.metadata.update(self._source_metadata(os.fspath(dl_manager.manual_dir)))
    root = self._root(os.fspath(dl_manager.manual_dir))
    skips = common.Skips()
    spill_dir = tempfile.mkdtemp(prefix="spill.", dir=os.fspath(self.data_dir))
    try:
      counts = self._spill(root, skips, common.CaptionStats(), spill_dir)
    except BaseException:
      shutil.rmtree(spill_dir, ignore_errors=True)
      raise
    skips.log(self.name)
    return {
      split: self._generate_examples(os.path.join(spill_dir, f"{split}.pkl"), spill_dir)
      for split in _sorted_splits(counts)
    }

  def _spill(
    self, root: str, skips: common.Skips, captions: common.CaptionStats, spill_dir: str
  ) -> dict[str, int]:
    """Reads the dataset once, pickling resized examples per split; fills the metadata."""
    size = self.builder_config.image_size
    files: dict[str, Any] = {}
    stats: dict[str, dict[str, Any]] = {}
    subjects, tasks, activities = set(), set(), {}
    parts: dict[int, set[str]] = collections.defaultdict(set)
    num_aus = None
    try:
      for split, ex in tfds.core.utils.tqdm(
        self._read_all(root, skips, captions),
        unit=" examples",
        desc=f"Reading {self.name} from {root}",
      ):
        au = np.asarray(ex["au"], np.int8)
        if num_aus is None:
          num_aus = len(au)
        elif len(au) != num_aus:
          raise common.DatasetError(ex["image/path"], f"{len(au)} AU values, expected {num_aus}")
        record = dict(ex)
        face = self._face(record, skips)
        if face is None:
          continue
        record["image"] = encode_jpeg(face)
        if split not in files:
          files[split] = open(os.path.join(spill_dir, f"{split}.pkl"), "wb")
          stats[split] = {
            "examples": 0,
            "expression": [0] * common.NUM_EXPRESSIONS,
            "au_positives": [0] * len(au),
            "au_known": [0] * len(au),
          }
        pickle.dump(record, files[split], protocol=pickle.HIGHEST_PROTOCOL)
        s = stats[split]
        s["examples"] += 1
        if ex["expression"] >= 0:
          s["expression"][ex["expression"]] += 1
        s["au_positives"] = [int(a + (v == 1)) for a, v in zip(s["au_positives"], au)]
        s["au_known"] = [int(a + (v >= 0)) for a, v in zip(s["au_known"], au)]
        if ex["subject"]:
          subjects.add(ex["subject"])
          if ex["fold"] > 0:
            parts[ex["fold"]].add(ex["subject"])
        if ex["task"]:
          tasks.add(ex["task"])
          if ex["activity_text"]:
            activities[ex["task"]] = ex["activity_text"]
    finally:
      for f in files.values():
        f.close()
    if not stats:
      raise common.DatasetError(root, f"no usable examples for {self.name} ({skips.report()})")
    md = self.info.metadata
    md["aus"] = self._aus(root)
    md["classes"] = self._classes()
    md.update(schema.metadata())
    md["subjects"] = sorted(subjects, key=common.natural_key)
    md["tasks"] = sorted(tasks, key=common.natural_key)
    md["activities"] = {t: activities[t] for t in md["tasks"] if t in activities}
    md["parts"] = {str(k): sorted(v, key=common.natural_key) for k, v in sorted(parts.items())}
    md["skips"] = dict(sorted(skips.counts.items()))
    md["stats"] = stats
    md["caption_stats"] = captions.as_dict()
    md["image_size"] = size
    cfg = self._alignment
    md["align"] = {
      "mode": cfg.align,
      "margin": cfg.align_margin,
      "template": align_lib.template(cfg.align_margin).round(4).tolist(),
    }
    md["options"] = {k: v for k, v in self._options().items()}
    return {split: s["examples"] for split, s in stats.items()}

  def _generate_examples(self, path: str, spill_dir: str):
    """Yields (key, example) from one split's spill file, then deletes it."""
    try:
      with open(path, "rb") as f:
        index = 0
        while True:
          try:
            record = pickle.load(f)
          except EOFError:
            break
          yield f"{index:09d}", record
          index += 1
    finally:
      if os.path.exists(path):
        os.remove(path)
      try:
        os.rmdir(spill_dir)  # only once every split has been written
      except OSError:
        pass


def _sorted_splits(counts: dict[str, int]) -> list[str]:
  order = {"train": 0, "validation": 1, "test": 2}
  return sorted(counts, key=lambda s: (order.get(s, 3), common.natural_key(s)))


# ----------------------------------------------------------------------------------------------
# The datasets.
# ----------------------------------------------------------------------------------------------


class Bp4d(_FaceBuilder):
  """BP4D-Spontaneous: AU occurrence (12 AUs), 41 subjects, tasks T1-T8, 3 subject parts."""

  name = "bp4d"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point --manual_dir at the BP4D-Spontaneous folder that holds the subject folders
  (<subject>/<task>/<frame>.jpg, e.g. F001/T1/0732.jpg) and AUCoding/AU_OCC/<subject>_<task>.csv
  (AUCoding/AU_INT/ optional).
  """

  DEFAULT_ALIGN = "landmarks"

  @classmethod
  def spec(cls, config: str) -> _Spec:
    return _Spec("bp4d", AU_KIND)


class Bp4dPlus(_FaceBuilder):
  """BP4D+: AU occurrence (12 AUs) on the coded segments of T1, T6, T7, T8; seeded 3 parts."""

  name = "bp4d_plus"
  BUILDER_CONFIGS = [FaceConfig(name="seed0", options=(("folds", 3), ("fold_seed", 0)))]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point --manual_dir at the BP4D+ folder that holds 2D+3D/<subject>.zip (or unpacked
  <subject>/<task>/<frame>.jpg folders) and AUCoding/AU_OCC/<subject>_<task>.csv. The config
  seed<N> picks the seed of the subject-exclusive 3-fold split (printed while preparing).
  """

  DEFAULT_ALIGN = "landmarks"

  @classmethod
  def spec(cls, config: str) -> _Spec:
    return _Spec("bp4d_plus", AU_KIND)


class Disfa(_FaceBuilder):
  """DISFA: AU occurrence (intensity >= 2) for 8 AUs, 27 subjects, 3 subject parts."""

  name = "disfa"
  BUILDER_CONFIGS = [
    FaceConfig(name="default", options=(("camera", "left"),)),
    FaceConfig(name="right", options=(("camera", "right"),)),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point --manual_dir at the DISFA folder that holds ActionUnit_Labels/<SN>/<SN>_au<N>.txt and
  either the extracted frames <SN>/<index>.png (0-based) or the videos
  Videos_LeftCamera/LeftVideo<SN>_comp.avi (config 'right': Videos_RightCamera/), whose frames
  are extracted once into <data_dir>/downloads/disfa_frames/<camera>/ (resumable).
  """

  DEFAULT_ALIGN = "landmarks"

  @classmethod
  def spec(cls, config: str) -> _Spec:
    return _Spec("disfa", AU_KIND)

  def _reader_kwargs(self) -> dict[str, Any]:
    camera = self._options()["camera"]
    work_dir = getattr(self, "work_dir", None) or os.path.join(
      os.fspath(self.data_dir), "downloads"
    )
    return {**self._options(), "frames_dir": os.path.join(work_dir, "disfa_frames", camera)}


class RafDb(_FaceBuilder):
  """RAF-DB basic: 7 expressions, train / test (split from the image-name prefix)."""

  name = "raf_db"
  BUILDER_CONFIGS = [
    FaceConfig(name="aligned", options=(("variant", "aligned"),)),
    FaceConfig(name="original", options=(("variant", "original"),)),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point --manual_dir at the RAF-DB folder that holds basic/ (basic/EmoLabel/list_patition_label.txt
  and basic/Image/aligned/ or basic/Image/original/).
  """

  @classmethod
  def default_align(cls, base: str) -> str:
    return "detector" if base == "original" else "none"  # 'aligned' images are aligned already

  @classmethod
  def spec(cls, config: str) -> _Spec:
    return _Spec("raf_db", FER_KIND, splits=("train", "test"))


class Ferplus(_FaceBuilder):
  """FER2013 images with FER+ labels: 8 expressions, train / validation / test."""

  name = "ferplus"
  BUILDER_CONFIGS = [
    FaceConfig(name="majority", options=(("label_mode", "majority"),)),
    FaceConfig(name="votes", options=(("label_mode", "votes"),)),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point --manual_dir at the folder that holds fer2013.csv and fer2013new.csv (or the FERPlus
  converter's FER2013Train/, FER2013Valid/, FER2013Test/ folders with label.csv and PNGs).
  """

  @classmethod
  def spec(cls, config: str) -> _Spec:
    return _Spec("ferplus", FER_KIND, splits=("train", "validation", "test"))


class Affectnet(_FaceBuilder):
  """AffectNet (manual annotations): 8 or 7 expressions, train / test (= the validation set)."""

  name = "affectnet"
  BUILDER_CONFIGS = [
    FaceConfig(name="8class", options=(("num_classes", 8), ("crop", True))),
    FaceConfig(name="7class", options=(("num_classes", 7), ("crop", True))),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point --manual_dir at the AffectNet folder that holds Manually_Annotated_file_lists/ and
  Manually_Annotated_Images/ (or train_set/ and val_set/ with images/ and annotations/).
  """

  DEFAULT_ALIGN = "landmarks"

  @classmethod
  def spec(cls, config: str) -> _Spec:
    return _Spec("affectnet", FER_KIND, splits=("train", "test"))


class Synthface(_FaceBuilder):
  """SynthFace, the embedded synthetic default: its BP4D-like part (AUs, activities, 3 subject
  parts) or its RAF-like part (expressions, train / test)."""

  name = "synthface"
  BUILDER_CONFIGS = [FaceConfig(name="bp4d"), FaceConfig(name="raf"), FaceConfig(name="disfa")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point --manual_dir at the output folder of `python -m input_pipeline.synthface --out DIR`
  (the BP4D-like tree; RAF/ for the RAF-like part, DISFA/ for the DISFA-like part).
  """

  @classmethod
  def default_align(cls, base: str) -> str:
    return "none" if _synthface_part(base) == "raf" else "landmarks"

  @classmethod
  def spec(cls, config: str) -> _Spec:
    part = _synthface_part(config)
    if part == "raf":
      return _Spec("raf_db", FER_KIND, subdir="RAF", splits=("train", "test"))
    if part == "disfa":
      return _Spec("disfa", AU_KIND, subdir="DISFA")
    return _Spec("synthface", AU_KIND)

  def _source_metadata(self, manual_dir: str) -> dict[str, Any]:
    """`synthface_version`: the generator version of the tree (its synthface.json), so that
    `sources.ensure_synthface` prepares again what an older generator's tree gave."""
    path = os.path.join(manual_dir, "synthface.json")
    if not os.path.isfile(path):
      return {}
    with open(path, encoding="utf-8") as f:
      return {"synthface_version": json.load(f).get("version")}

  def _classes(self) -> list[str]:
    part = _synthface_part(self.builder_config.name)
    if part == "raf":
      return super()._classes()
    if part == "disfa":
      return []  # DISFA codes AUs only
    return schema.expressions()  # the BP4D-like part labels expressions too


class Manifest(_FaceBuilder):
  """A user's own data from manifest.csv / manifest.jsonl: parts from `fold`, else `split`."""

  name = "manifest"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point --manual_dir at the folder that holds manifest.csv or manifest.jsonl (columns: path and
  any of subject, task, activity_text, frame, au_<n>, expression, fold, split, caption,
  landmarks; image paths are relative to that folder or absolute). Faces are stored as given
  (resized, centre crop) unless the config aligns them: `_lm` from the landmarks column, `_det`
  by the detector, `_lmdet` both.
  """

  @classmethod
  def spec(cls, config: str) -> _Spec:
    return _Spec("manifest", AU_KIND)

  @classmethod
  def expected_aus(cls, config: str) -> list[int] | None:
    return None  # the manifest's au_<n> columns decide; metadata['aus'] lists them

  def _aus(self, root: str) -> list[int]:
    return readers.get("manifest").aus(root)

  def _classes(self) -> list[str]:
    return schema.expressions()

  def _read_all(
    self, root: str, skips: common.Skips, captions: common.CaptionStats
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    """One pass over the manifest: parts from `fold` if it has folds, else its `split`s."""
    module = readers.get("manifest")
    by_fold = bool(module.folds(root))
    counted = module.has_captions(root)
    lm = bool(self._reader_kwargs().get("landmarks"))
    for line, split, ex in module.read_splits(root, skips=skips, landmarks=lm):
      if by_fold:
        if ex["fold"] <= 0:
          skips.add(SKIP_NO_PART, ex["subject"])
          continue
        split = f"part{ex['fold']}"
      if counted:
        captions.add(ex["caption"], line)
      yield split, ex
    captions.log(module.manifest_path(root))


BUILDERS: dict[str, type[_FaceBuilder]] = {
  b.name: b for b in (Bp4d, Bp4dPlus, Disfa, RafDb, Ferplus, Affectnet, Synthface, Manifest)
}


def _split_name(name: str) -> tuple[str, str | None, int | None, int | None]:
  """'<base>[_<align>][_m<margin %>][_<N>px]' -> (base, align suffix, margin %, size)."""
  m = _SIZE_RE.match(name)
  rest, size = (m.group(1), int(m.group(2))) if m else (name, None)
  a = _ALIGN_RE.match(rest)
  return a.group(1), a.group(2), (int(a.group(3)) if a.group(3) else None), size


def _base_name(name: str) -> str:
  return _split_name(name)[0]


_SYNTHFACE_RE = re.compile(r"^(bp4d|raf|disfa)(_[a-z0-9_]+)?$")


def _synthface_part(config: str) -> str:
  """'bp4d', 'raf' or 'disfa': the SynthFace part a config ('raf', 'raf_<tag>_64px') reads."""
  m = _SYNTHFACE_RE.match(_base_name(config))
  return m.group(1) if m else _base_name(config)


def make_config(
  dataset: str,
  config: str | None = None,
  image_size: int | None = None,
  *,
  align: str | None = None,
  align_margin: float | None = None,
) -> FaceConfig:
  """The FaceConfig of `dataset` named `config` (default: the first), at `image_size`.

  Config names are '<base>[_<align>][_m<margin %>][_<N>px]': `config` may carry a size suffix
  ('7class_224px'), an alignment suffix of ALIGN_MODES ('default_noalign', 'original_det') and
  a margin in percent ('default_m25'); `image_size`, `align` and `align_margin`, if given,
  override them, and the returned config's name carries every value that is not its dataset's
  default (size 112, `default_align`, margin 0.2). bp4d_plus accepts any 'seed<N>', synthface
  any 'bp4d_<tag>' / 'raf_<tag>'.
  """
  cls = builder_class(dataset)
  name = config or cls.BUILDER_CONFIGS[0].name
  base, align_suffix, margin_pct, named_size = _split_name(name)
  size = image_size or named_size or DEFAULT_IMAGE_SIZE
  if size < 8:
    raise ValueError(f"image_size must be >= 8, got {size}")
  if align is not None and align not in ALIGN_MODES:
    raise ValueError(f"unknown alignment mode {align!r}; known: {sorted(ALIGN_MODES)}")
  mode = align or (_ALIGN_BY_SUFFIX[align_suffix] if align_suffix else cls.default_align(base))
  margin = (
    align_margin
    if align_margin is not None
    else (margin_pct / 100 if margin_pct is not None else align_lib.DEFAULT_MARGIN)
  )
  align_lib.template(margin)  # checks the range
  if abs(margin * 100 - round(margin * 100)) > 1e-9:
    raise ValueError(f"alignment margin {margin} must be a whole percentage (e.g. 0.1, 0.25)")
  known = {c.name: c for c in cls.BUILDER_CONFIGS}
  if base in known:
    proto = known[base]
  elif dataset == "bp4d_plus" and re.fullmatch(r"seed\d+", base):
    proto = FaceConfig(name=base, options=(("folds", 3), ("fold_seed", int(base[4:]))))
  elif dataset == "synthface" and _SYNTHFACE_RE.match(base):
    proto = known[_synthface_part(base)]  # a part of SynthFace generated with other sizes
  elif dataset == "manifest" and re.fullmatch(r"[a-z][a-z0-9_]*", base):
    proto = FaceConfig(name=base)  # a name of the user's choosing: one data_dir, many manifests
  else:
    extra = {
      "bp4d_plus": " (or seed<N>)",
      "synthface": " (or bp4d_<tag>, raf_<tag>)",
      "manifest": " (or any lower-case [a-z0-9_] name)",
    }
    extra = extra.get(dataset, "")
    raise ValueError(
      f"unknown config {name!r} for {dataset}; known: {sorted(known)}{extra}, "
      f"optionally suffixed _<align> ({', '.join(_ALIGN_BY_SUFFIX)}), _m<margin %>, _<N>px"
    )
  full = base
  if mode != cls.default_align(base):
    full += f"_{ALIGN_MODES[mode]}"
  if mode != "none" and abs(margin - align_lib.DEFAULT_MARGIN) > 1e-9:
    full += f"_m{round(margin * 100)}"
  if size != DEFAULT_IMAGE_SIZE:
    full += f"_{size}px"
  return dataclasses.replace(
    proto, name=full, image_size=size, align=mode, align_margin=float(margin)
  )


def expected_aus(dataset: str, config: str | None = None) -> list[int] | None:
  """The AU numbers a prepared `dataset` (under `config`) stores, or None where its data decides."""
  return builder_class(dataset).expected_aus(make_config(dataset, config).name)


def builder_class(dataset: str) -> type[_FaceBuilder]:
  if dataset not in BUILDERS:
    raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(BUILDERS)}")
  return BUILDERS[dataset]


def builder(
  dataset: str,
  data_dir: str | os.PathLike[str],
  config: str | None = None,
  image_size: int | None = None,
  *,
  work_dir: str | os.PathLike[str] | None = None,
) -> _FaceBuilder:
  """An instance of the builder of `dataset` (not prepared yet) writing under data_dir.

  `work_dir`: where a reader may keep what it derives from the user's files across prepares
  (DISFA's extracted video frames; default `<data_dir>/downloads`), made only when used.
  """
  cls = builder_class(dataset)
  cfg = make_config(dataset, config, image_size)
  # TFDS refuses a config object named like a class config: pass those by name.
  known = {c.name for c in cls.BUILDER_CONFIGS}
  b = cls(data_dir=os.fspath(data_dir), config=cfg.name if cfg.name in known else cfg)
  b.work_dir = os.fspath(work_dir or os.path.join(os.fspath(data_dir), "downloads"))
  return b
