r"""Predict with a trained model on your own faces: images, a folder, a glob, a video, a manifest.

  python -m clef_jax.predict --init=clef:workdirs/finetune_au --inputs=faces/ --out=preds
  python -m clef_jax.predict --init=hf:exported_run --inputs=clip.mp4 --every=5 --out=preds
  python -m clef_jax.predict --init=hf:models/synthface-clip --inputs='faces/*.jpg' \
      --prompts="a person squinting","a person in pain" --out=preds

`--init` is a `clef:RUN` workdir (its trained head, if it has one), an `hf:DIR` CLIP folder (with
the head of `clef_jax.export`'s side file, if there is one) or `openai:FILE`. `--inputs` is an
image, a folder (images and videos in it, recursively), a glob, a video (.mp4 .avi .mov .mkv
.webm) or a manifest (.jsonl lines with a "path", relative to the manifest's folder).

Writes into --out:
  predictions.csv     one row per face: file, frame, box, per-AU probability and 0/1 at the
                      head's threshold, expression probabilities and argmax, prompt scores
  predictions.jsonl   the same rows as JSON objects
  overlays/*.png      per image: the box, the top AUs, the expression (and the best prompt)
  videos/*_aus.png    per video: per-frame AU probabilities (or expression / prompt scores)
  errors.txt          inputs that could not be read, with the reason (counted, never fatal)

Faces: every image or video frame goes through the face detector of preparation
(`input_pipeline.align.Detector`, MTCNN with its weights inside the `mtcnn` package), and each
face found is aligned onto the preparation template (eye centres and mouth, margin 0.2) at the
model's input size: one row per face, its box the detector's, in the input's pixels. An image or
frame where no face is found is listed in errors.txt ('no face found'), never centre-cropped.
`--no_detect` takes inputs that are already aligned face crops (SynthFace frames, a dataset's
aligned crops): the centred square of the shorter side, resized as the evaluators do
(`augment.eval_image`), the box being that square.

Python API: `Predictor(spec)(images)` on uint8 [H, W, 3] arrays -> a `Predictions` of arrays.
"""

from __future__ import annotations

import csv
import dataclasses
import glob as glob_lib
import json
import os
import pathlib
import sys
from typing import Any, Iterator, Sequence

import numpy as np

from clef_jax import heads as heads_lib

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
TOP_AUS = 3  # AUs named on an overlay


# ------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
  """Per-face outputs, each an array with N rows (None where the model has no such head).

  z [N, D] unit-norm image embeddings; au_prob / au [N, J] (probability, 0/1 at the head's
  threshold) for `aus`; fer_prob [N, C] and fer [N] (argmax index into `classes`);
  prompt_prob [N, P] (softmax over the prompts) and prompt_cos [N, P] (cosine similarity);
  au_intensity [N, J'] (0-5, an AU intensity run) for `intensity_aus`.
  """

  z: np.ndarray
  aus: tuple = ()
  au_prob: np.ndarray | None = None
  au: np.ndarray | None = None
  classes: tuple = ()
  fer_prob: np.ndarray | None = None
  fer: np.ndarray | None = None
  prompts: tuple = ()
  prompt_prob: np.ndarray | None = None
  prompt_cos: np.ndarray | None = None
  intensity_aus: tuple = ()
  au_intensity: np.ndarray | None = None


class Predictor:
  """A model for prediction: `Predictor('clef:RUN')(images)` -> `Predictions`.

  Args:
    spec: `clef:DIR` (a run; its trained head), `hf:DIR` (a CLIP folder; the head of its
      clef_heads.json side file, if any) or `openai:FILE`.
    prompts: free-text prompts to score every face against with the text tower (each is
      ensembled over the `free_text` templates of the prompts file).
    tokenizer: tokenizer spec for the prompts (default: the run's, or the hf: folder itself).
    batch_size: images per jitted call (the last batch is padded; one compilation).
    dtype: compute dtype of the towers ('float32' or 'bfloat16').
    step: checkpoint step of a clef: run (default: the latest).
  """

  def __init__(
    self,
    spec: str,
    *,
    prompts: Sequence[str] = (),
    tokenizer: str | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
    step: int | None = None,
  ):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from clef_jax import models  # pylint: disable=g-import-not-at-top
    from clef_jax import pretrained  # pylint: disable=g-import-not-at-top
    from clef_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prefix, _, path = spec.partition(":")
    self.heads: list[heads_lib.Head] = []
    tok = None
    if prefix == "clef":
      run = heads_lib.load_run(path, step)
      model_config = run.config.model
      params = {k: v for k, v in run.params.items() if k != "heads"}
      self.heads = [run.head] if run.head is not None else []
      tok = run.tokenizer
    else:
      model_config, params = pretrained.load(spec)
      if prefix == "hf":
        self.heads = heads_lib.load(path)
    with model_config.unlocked():
      model_config.dtype = dtype
    self.model_config = model_config
    self.image_size = int(model_config.image_size)
    self.batch_size = int(batch_size)
    self.spec = spec
    model = models.build(model_config)
    self._params = jax.device_put(params)

    def embed(p, images):
      x = models.normalize_images(images)
      return model.apply({"params": p}, x, method=lambda m, x: m.encode_image(x))

    self._embed = jax.jit(embed)

    self.prompts = tuple(prompts)
    self._prompt_emb = None
    self._prompt_scale = None
    if self.prompts:
      if tokenizer is not None:
        tok = tokenizer_lib.get(tokenizer, int(model_config.context_length))
      elif tok is None:
        if prefix != "hf":
          raise ValueError(
            f"--prompts with {spec}: pass --tokenizer=<folder> (the model's tokenizer files)"
          )
        tok = tokenizer_lib.get(path, int(model_config.context_length))
      if tok.vocab_size > model_config.vocab_size:
        raise ValueError(
          f"tokenizer {tok.spec!r} has {tok.vocab_size} ids, the text tower {model_config.vocab_size}"
        )
      texts = prompt_texts(self.prompts)  # [T][P]
      tokens = jnp.asarray(np.stack([tok(row) for row in texts]))

      def encode(p, t):
        z = model.apply(
          {"params": p}, t.reshape(-1, t.shape[-1]), method=lambda m, t: m.encode_text(t)
        )
        z = z.reshape(*t.shape[:-1], -1).mean(0)
        return models.l2_normalize(z), models.logit_scale(
          p["logit_scale"], model_config.logit_scale_max
        )

      emb, scale = jax.device_get(jax.jit(encode)(self._params, tokens))
      self._prompt_emb, self._prompt_scale = np.asarray(emb), float(scale)

  @property
  def au_head(self) -> heads_lib.Head | None:
    return next((h for h in self.heads if h.task == "au"), None)

  @property
  def fer_head(self) -> heads_lib.Head | None:
    return next((h for h in self.heads if h.task == "fer"), None)

  @property
  def intensity_head(self) -> heads_lib.Head | None:
    return next((h for h in self.heads if h.task == "au_intensity"), None)

  def embed(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] at the model's size -> float32 [N, D] unit-norm embeddings."""
    import jax  # pylint: disable=g-import-not-at-top

    images = np.asarray(images)
    s = self.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
      raise ValueError(
        f"Predictor.embed expects uint8 [N, {s}, {s}, 3], got {images.dtype} {images.shape}"
      )
    out = []
    for i in range(0, len(images), self.batch_size):
      chunk = images[i : i + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:  # one static shape: one compilation
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, s, s, 3), np.uint8)])
      out.append(np.asarray(jax.device_get(self._embed(self._params, chunk)))[:n])
    if not out:
      return np.zeros((0, int(self.model_config.embed_dim)), np.float32)
    return np.concatenate(out).astype(np.float32)

  def __call__(self, images: Sequence[np.ndarray]) -> Predictions:
    """Face crops (uint8 [H, W, 3], any size: eval transform to the model's input) -> outputs."""
    s = self.image_size
    crops = [to_input(im, s)[0] for im in images]
    return self.from_embeddings(
      self.embed(np.stack(crops) if crops else np.zeros((0, s, s, 3), np.uint8))
    )

  def from_embeddings(self, z: np.ndarray) -> Predictions:
    out = Predictions(z=z)
    if (h := self.au_head) is not None:
      out.aus = h.labels
      out.au_prob = h.probabilities(z)
      out.au = (out.au_prob >= 0.5).astype(np.int8)
    if (h := self.fer_head) is not None:
      out.classes = h.labels
      out.fer_prob = h.probabilities(z)
      out.fer = np.argmax(out.fer_prob, -1)
    if (h := self.intensity_head) is not None:
      out.intensity_aus = h.labels
      out.au_intensity = h.intensities(z)
    if self._prompt_emb is not None:
      out.prompts = self.prompts
      cos = z @ self._prompt_emb.T
      logits = self._prompt_scale * cos.astype(np.float64)
      e = np.exp(logits - logits.max(-1, keepdims=True))
      out.prompt_prob = (e / e.sum(-1, keepdims=True)).astype(np.float32)
      out.prompt_cos = cos.astype(np.float32)
    return out


def prompt_texts(prompts: Sequence[str]) -> list[list[str]]:
  """[T][P]: each prompt in each `free_text` template of the prompts file."""
  from clef_jax import prompts as prompts_lib  # pylint: disable=g-import-not-at-top

  cleaned = []
  for i, p in enumerate(prompts):
    if not isinstance(p, str) or not p.strip():
      raise ValueError(f"prompt {i} is empty")
    cleaned.append(p.strip().rstrip("."))
  return [[t.format(p) for p in cleaned] for t in prompts_lib.templates("free_text")]


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}")
  return np.ascontiguousarray(image[..., :3])


def to_input(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """A face crop -> (uint8 [size, size, 3], box x0, y0, x1, y1 of the square used)."""
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top

  image = _rgb(image)
  h, w = image.shape[:2]
  side = min(h, w)
  x0, y0 = (w - side) // 2, (h - side) // 2
  return augment.eval_image(image, size), (x0, y0, x0 + side, y0 + side)


def detect_inputs(
  detector: Any, image: np.ndarray, size: int
) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
  """Every face `detector` finds in an image -> [(aligned uint8 [size, size, 3], box x0, y0,
  x1, y1)], the most confident first ([] when there is none)."""
  from input_pipeline import align  # pylint: disable=g-import-not-at-top

  image = _rgb(image)
  out = []
  for face in detector(image):
    x, y, w, h = face.box
    out.append((align.align(image, face.keypoints, "five", size), (x, y, x + w, y + h)))
  return out


# ------------------------------------------------------------------------------------------
# Inputs.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Face:
  file: str
  frame: int | None  # the frame index of a video, None for an image
  image: np.ndarray  # the full image / frame, uint8 [H, W, 3]


@dataclasses.dataclass
class Problem:
  where: str  # file (or manifest:line)
  reason: str


def list_inputs(spec: str) -> tuple[list[str], list[Problem]]:
  """The media files an --inputs value names (sorted), and problems found while listing."""
  problems: list[Problem] = []
  path = pathlib.Path(os.path.expanduser(spec))
  if any(c in spec for c in "*?["):
    files = sorted(p for p in glob_lib.glob(os.path.expanduser(spec), recursive=True))
    files = [f for f in files if os.path.isfile(f)]
    if not files:
      raise FileNotFoundError(f"--inputs={spec!r}: the pattern matches no file")
    return files, problems
  if path.is_dir():
    files = sorted(
      str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS
    )
    if not files:
      raise FileNotFoundError(f"--inputs={spec}: no image or video files in the folder")
    return files, problems
  if not path.exists():
    raise FileNotFoundError(f"--inputs={spec}: no such file or folder")
  if path.suffix.lower() == ".jsonl":
    return _manifest_files(path)
  return [str(path)], problems


def _manifest_files(path: pathlib.Path) -> tuple[list[str], list[Problem]]:
  files, problems = [], []
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      where = f"{path}:{n}"
      try:
        line = raw.decode("utf-8").strip()
      except UnicodeDecodeError as e:
        problems.append(Problem(where, f"not UTF-8 ({e.reason} at byte {e.start})"))
        continue
      if not line:
        continue
      try:
        row = json.loads(line)
        rel = row["path"]
        if not isinstance(rel, str) or not rel:
          raise TypeError("'path' is not a non-empty string")
      except (ValueError, KeyError, TypeError) as e:
        problems.append(
          Problem(where, f"not a manifest row with a 'path' ({type(e).__name__}: {e})")
        )
        continue
      files.append(str(path.parent / rel) if not os.path.isabs(rel) else rel)
  if not files:
    raise FileNotFoundError(f"{path}: the manifest names no image")
  return files, problems


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB (Pillow; the first frame of an animated file)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(path) as im:
    im.load()
    return np.asarray(im.convert("RGB"), np.uint8)


def read_video(path: str, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
  """(frame index, uint8 [H, W, 3]) of every `every`-th frame (PyAV, its bundled ffmpeg)."""
  import av  # pylint: disable=g-import-not-at-top

  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    for i, frame in enumerate(container.decode(video=0)):
      if i % every == 0:
        yield i, frame.to_ndarray(format="rgb24")


def iter_faces(files: Sequence[str], problems: list[Problem], every: int = 1) -> Iterator[Face]:
  """Faces of the inputs in order; unreadable files are appended to `problems` and skipped."""
  for f in files:
    if f.lower().endswith(VIDEO_EXTS):
      try:
        n = 0
        for i, frame in read_video(f, every):
          n += 1
          yield Face(f, i, frame)
        if n == 0:
          problems.append(Problem(f, "the video has no frames"))
      except Exception as e:  # pylint: disable=broad-except  (av raises many kinds)
        problems.append(Problem(f, f"unreadable video ({type(e).__name__}: {e})"))
      continue
    try:
      image = read_image(f)
    except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds)
      problems.append(Problem(f, f"unreadable image ({type(e).__name__}: {e})"))
      continue
    yield Face(f, None, image)


# ------------------------------------------------------------------------------------------
# Outputs.
# ------------------------------------------------------------------------------------------


def rows(faces: Sequence[Face], boxes, pred: Predictions) -> list[dict[str, Any]]:
  """One JSON-able dict per face."""
  out = []
  for i, face in enumerate(faces):
    r: dict[str, Any] = {"file": face.file, "frame": face.frame, "box": list(map(int, boxes[i]))}
    if pred.au_prob is not None:
      r["au"] = {
        f"AU{a}": {"prob": round(float(pred.au_prob[i, j]), 6), "present": int(pred.au[i, j])}
        for j, a in enumerate(pred.aus)
      }
    if pred.au_intensity is not None:
      r["au_intensity"] = {
        f"AU{a}": round(float(pred.au_intensity[i, j]), 4) for j, a in enumerate(pred.intensity_aus)
      }
    if pred.fer_prob is not None:
      r["expression"] = {
        "label": str(pred.classes[int(pred.fer[i])]),
        "probs": {c: round(float(pred.fer_prob[i, k]), 6) for k, c in enumerate(pred.classes)},
      }
    if pred.prompt_prob is not None:
      r["prompts"] = {
        p: {
          "prob": round(float(pred.prompt_prob[i, k]), 6),
          "cos": round(float(pred.prompt_cos[i, k]), 6),
        }
        for k, p in enumerate(pred.prompts)
      }
      r["prompt"] = pred.prompts[int(np.argmax(pred.prompt_prob[i]))]
    out.append(r)
  return out


def csv_header(pred: Predictions) -> list[str]:
  cols = ["file", "frame", "box_x0", "box_y0", "box_x1", "box_y1"]
  for a in pred.aus:
    cols += [f"AU{a}_prob", f"AU{a}"]
  cols += [f"AU{a}_intensity" for a in pred.intensity_aus]
  cols += [f"p_{c}" for c in pred.classes] + (["expression"] if pred.classes else [])
  cols += [f"prompt: {p}" for p in pred.prompts] + (["prompt"] if pred.prompts else [])
  return cols


def csv_row(r: dict[str, Any]) -> list[Any]:
  out = [r["file"], "" if r["frame"] is None else r["frame"], *r["box"]]
  for v in r.get("au", {}).values():
    out += [f"{v['prob']:.6f}", v["present"]]
  out += [f"{v:.4f}" for v in r.get("au_intensity", {}).values()]
  if "expression" in r:
    out += [f"{p:.6f}" for p in r["expression"]["probs"].values()] + [r["expression"]["label"]]
  if "prompts" in r:
    out += [f"{v['prob']:.6f}" for v in r["prompts"].values()] + [r["prompt"]]
  return out


def _safe_name(file: str, root: str) -> str:
  rel = os.path.relpath(file, root) if root else os.path.basename(file)
  stem = os.path.splitext(rel)[0]
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem.replace(os.sep, "__"))


def overlay(
  image: np.ndarray, face_rows: dict[str, Any] | Sequence[dict[str, Any]], min_side: int = 256
):
  """A PIL image: the input (scaled up to `min_side` if smaller), each face's box and its top
  labels (`face_rows`: one row, or the rows of every face of the image)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  if isinstance(face_rows, dict):
    face_rows = [face_rows]
  im = Image.fromarray(image)
  scale = max(1.0, min_side / min(im.size))
  if scale > 1:
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
  draw = ImageDraw.Draw(im)
  for r in face_rows:
    x0, y0, x1, y1 = (v * scale for v in r["box"])
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 255, 0), width=2)
    lines = []
    if "expression" in r:
      e = r["expression"]
      lines.append(f"{e['label']} {e['probs'][e['label']]:.2f}")
    if "au" in r:
      top = sorted(r["au"].items(), key=lambda kv: -kv[1]["prob"])[:TOP_AUS]
      lines.append(" ".join(f"{k} {v['prob']:.2f}" for k, v in top))
    if "au_intensity" in r:
      top = sorted(r["au_intensity"].items(), key=lambda kv: -kv[1])[:TOP_AUS]
      lines.append(" ".join(f"{k} {v:.1f}/5" for k, v in top))
    if "prompt" in r:
      lines.append(f"{r['prompt'][:40]} {r['prompts'][r['prompt']]['prob']:.2f}")
    y = y0 + 3
    for line in lines:
      box = draw.textbbox((x0 + 3, y), line)
      draw.rectangle(box, fill=(0, 0, 0))
      draw.text((x0 + 3, y), line, fill=(255, 255, 0))
      y = box[3] + 2
  return im


def video_plot(path: str, video_rows: list[dict[str, Any]], title: str) -> None:
  """Per-frame AU probabilities (else AU intensities, expression or prompt probabilities) of
  one video."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  frames = [r["frame"] for r in video_rows]
  top = 1.0
  if "au" in video_rows[0]:
    series = {k: [r["au"][k]["prob"] for r in video_rows] for k in video_rows[0]["au"]}
    ylabel = "AU probability"
  elif "au_intensity" in video_rows[0]:
    series = {k: [r["au_intensity"][k] for r in video_rows] for k in video_rows[0]["au_intensity"]}
    ylabel, top = "AU intensity (0-5)", 5.0
  elif "expression" in video_rows[0]:
    series = {
      k: [r["expression"]["probs"][k] for r in video_rows]
      for k in video_rows[0]["expression"]["probs"]
    }
    ylabel = "expression probability"
  else:
    series = {
      k[:30]: [r["prompts"][k]["prob"] for r in video_rows] for k in video_rows[0]["prompts"]
    }
    ylabel = "prompt probability"
  fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
  for name, values in series.items():
    ax.plot(frames, values, label=name, lw=1.2)
  ax.set_xlabel("frame")
  ax.set_ylabel(ylabel)
  ax.set_ylim(-0.02 * top, 1.02 * top)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, ncol=min(6, len(series)), loc="upper right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run(
  predictor: Predictor,
  inputs: str,
  out_dir: str,
  *,
  every: int = 1,
  overlays: bool = True,
  progress: bool = True,
  detect: bool = True,
) -> dict[str, Any]:
  """Predicts on every face of `inputs`, writes the outputs into `out_dir`, returns a summary.

  detect: find and align the faces with the detector (see the module docstring); False takes
  each image as an aligned face crop.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  if every < 1:
    raise ValueError(f"--every must be >= 1, got {every}")
  if not (predictor.heads or predictor.prompts):
    raise ValueError(
      f"{predictor.spec} has no trained head (AU/FER) and no --prompts were given: nothing "
      "to predict. Pass --prompts=..., or a fine-tuned run / an export with clef_heads.json"
    )
  files, problems = list_inputs(inputs)
  detector = None
  if detect:
    from input_pipeline import align  # pylint: disable=g-import-not-at-top

    detector = align.Detector()
  root = inputs if os.path.isdir(inputs) else ""
  out = pathlib.Path(out_dir)
  (out / "overlays").mkdir(parents=True, exist_ok=True)
  (out / "videos").mkdir(parents=True, exist_ok=True)
  header = None
  n_faces = 0
  per_video: dict[str, list[dict[str, Any]]] = {}
  bar = tqdm(total=len(files), unit="file", disable=not progress, desc="predict")
  last_file = None
  with (
    open(out / "predictions.csv", "w", newline="", encoding="utf-8") as fc,
    open(out / "predictions.jsonl", "w", encoding="utf-8") as fj,
  ):
    writer = csv.writer(fc)
    batch: list[Face] = []

    def flush():
      nonlocal header, n_faces
      if not batch:
        return
      faces, crops, boxes = [], [], []
      for f in batch:
        if detector is None:
          found = [to_input(f.image, predictor.image_size)]
        else:
          found = detect_inputs(detector, f.image, predictor.image_size)
          if not found:
            where = f.file if f.frame is None else f"{f.file} frame {f.frame}"
            problems.append(Problem(where, "no face found by the detector"))
        for crop, box in found:
          faces.append(f)
          crops.append(crop)
          boxes.append(box)
      batch.clear()
      if not faces:
        return
      pred = predictor.from_embeddings(predictor.embed(np.stack(crops)))
      if header is None:
        header = csv_header(pred)
        writer.writerow(header)
      images: dict[int, tuple[Face, list[dict[str, Any]]]] = {}
      for face, r in zip(faces, rows(faces, boxes, pred)):
        writer.writerow(csv_row(r))
        fj.write(json.dumps(r) + "\n")
        if face.frame is None:
          images.setdefault(id(face), (face, []))[1].append(r)
        else:
          per_video.setdefault(face.file, []).append(r)
      if overlays:
        for face, image_rows in images.values():
          overlay(face.image, image_rows).save(
            out / "overlays" / f"{_safe_name(face.file, root)}.png"
          )
      n_faces += len(faces)

    for face in iter_faces(files, problems, every):
      if face.file != last_file:
        if last_file is not None:
          bar.update(1)
        last_file = face.file
      batch.append(face)
      if len(batch) == predictor.batch_size:
        flush()
    flush()
    bar.update(len(files) - bar.n)
    bar.close()
  for f, video_rows in per_video.items():
    video_plot(
      str(out / "videos" / f"{_safe_name(f, root)}_aus.png"),
      video_rows,
      f"{os.path.basename(f)}: {len(video_rows)} frames ({predictor.spec})",
    )
  with open(out / "errors.txt", "w", encoding="utf-8") as f:
    for p in problems:
      f.write(f"{p.where}\t{p.reason}\n")
  return {
    "files": len(files),
    "faces": n_faces,
    "videos": len(per_video),
    "errors": len(problems),
    "problems": problems,
    "out": str(out),
  }


def main(argv: list[str] | None = None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top

  ap = argparse.ArgumentParser(
    prog="python -m clef_jax.predict",
    description="Predict AUs, expressions and prompt scores on your own face images and videos.",
  )
  ap.add_argument("--init", required=True, help="clef:RUN, hf:DIR or openai:FILE")
  ap.add_argument("--inputs", required=True, help="image, folder, glob, video or manifest.jsonl")
  ap.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
  ap.add_argument(
    "--prompts",
    default="",
    help='comma-separated free-text prompts, e.g. "a person squinting","a person in pain"',
  )
  ap.add_argument(
    "--tokenizer", default=None, help="tokenizer for --prompts (default: the model's)"
  )
  ap.add_argument("--every", type=int, default=1, help="every N-th video frame (default 1)")
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--step", type=int, default=None, help="checkpoint step of a clef: run")
  ap.add_argument("--no_overlays", action="store_true", help="skip the per-image overlay PNGs")
  ap.add_argument(
    "--no_detect",
    action="store_true",
    help="inputs are aligned face crops: no detection (the centred square of each image)",
  )
  args = ap.parse_args(argv)
  try:
    prompts = next(csv.reader([args.prompts], skipinitialspace=True)) if args.prompts else []
    predictor = Predictor(
      args.init,
      prompts=[p for p in prompts if p.strip()],
      tokenizer=args.tokenizer,
      batch_size=args.batch_size,
      dtype=args.dtype,
      step=args.step,
    )
    summary = run(
      predictor,
      args.inputs,
      args.out,
      every=args.every,
      overlays=not args.no_overlays,
      detect=not args.no_detect,
    )
  except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(
    f"{summary['faces']} faces from {summary['files']} files ({summary['videos']} videos) -> "
    f"{summary['out']}/predictions.csv, predictions.jsonl"
  )
  if summary["errors"]:
    print(f"{summary['errors']} inputs could not be read (listed in {summary['out']}/errors.txt):")
    for p in summary["problems"][:10]:
      print(f"  {p.where}: {p.reason}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
