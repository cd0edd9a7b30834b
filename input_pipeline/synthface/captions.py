"""SynthFace-Captions: the LAION-Face analog, web faces with noisy alt-text (docs/foundation.md).

FaRL was built by image–text contrastive pretraining on LAION-Face: faces from the web with
whatever alt-text came with them. This generator draws the same kind of corpus: many identities
that are not the BP4D-like subjects nor the RAF-like ones (their own random stream), in-the-wild
variation (pose, lighting, background, glasses, earrings, age, hair), and for every image an
alt-text built from what was rendered, with web-like noise:

  * most captions describe the person and the photo (gender, age, hair, glasses, lighting,
    background, pose, photo type, file-name and hashtag clutter);
  * an expression word appears in a share ``expression_rate`` of them, a share ``wrong_rate`` of
    those names another expression, and a share ``vague_rate`` of the rest is vague ("looks
    upset", "making a face");
  * appearance phrases of the visible AUs ("raised eyebrows", "wrinkled nose") in a share
    ``appearance_rate``; FACS names ("lip corner puller") in ``facs_rate`` (almost never).

Layout under ``out``::

  manifest.jsonl    {"path": "images/C00001_00.jpg", "caption": "...", "subject": "C00001",
                     "split": "train" | "validation", "landmarks": [[x, y] x 5]}, one line
                     per image (input_pipeline's `manifest` reader: the same path as a user's
                     own image–text data). The landmarks are what a face detector gives a web
                     photo (eye centres, nose tip, mouth corners; 0-based pixels): the corpus is
                     prepared aligned from them, the crop the evaluation sets get (FaRL, like
                     the AU models, trains and tests on aligned face crops)
  images/*.jpg      the faces
  truth.jsonl       what was rendered (expression, AU intensities, what the caption says); for
                    analysis only, never read by training
  captions.json     generator, version, seed, the rates asked for and the shares measured

Every file is a function of the seed and the arguments: the same call gives a byte-identical
tree, whatever the worker count. ``python -m input_pipeline.synthface.captions --out DIR``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw
import tqdm

from input_pipeline import align
from input_pipeline.synthface import population
from input_pipeline.synthface import render
from input_pipeline.synthface import writer

VERSION = "1.1"  # 1.1: five-point landmarks in the manifest
GENERATOR = "synthface-captions"
# Random streams of this corpus (population uses 1..4): identities and images.
_S_IDENTITY, _S_IMAGE = 11, 12
SUBJECT_PREFIX = "C"  # C00001 ...: never a BP4D-like name (F001/M001) nor a RAF-like file name

EXPRESSIONS = tuple(population.EXPRESSION_PROTOTYPES)  # neutral, happiness, ... contempt
_EXPRESSION_PRIOR = {
  "neutral": 0.26,
  "happiness": 0.26,
  "sadness": 0.1,
  "surprise": 0.1,
  "fear": 0.06,
  "disgust": 0.07,
  "anger": 0.09,
  "contempt": 0.06,
}

# What people write for an expression: adjectives, verbs and the stock-photo keyword nouns.
EXPRESSION_WORDS: dict[str, tuple[str, ...]] = {
  "neutral": ("neutral expression", "serious", "calm face", "expressionless", "neutral"),
  "happiness": ("smiling", "happy", "laughing", "cheerful", "grinning", "happiness", "joy"),
  "sadness": ("sad", "unhappy", "crying", "sadness", "sorrowful", "depressed"),
  "surprise": ("surprised", "shocked", "amazed", "astonished", "surprise"),
  "fear": ("scared", "afraid", "frightened", "terrified", "fear"),
  "disgust": ("disgusted", "grossed out", "disgust", "repulsed"),
  "anger": ("angry", "furious", "mad", "annoyed", "anger"),
  "contempt": ("smirking", "contemptuous", "sneering", "contempt", "smug"),
}
# Words that read well before the noun ("a smiling woman"); the rest go in the list.
_ADJECTIVES = frozenset(
  "smiling happy laughing cheerful grinning sad unhappy crying depressed sorrowful surprised "
  "shocked amazed astonished scared frightened terrified disgusted repulsed angry furious mad "
  "annoyed smirking smug contemptuous sneering serious expressionless neutral emotional".split()
)
VAGUE_WORDS: tuple[str, ...] = (
  "looks upset",
  "making a face",
  "funny face",
  "emotional",
  "strange expression",
  "reacting",
  "mood",
)
# Appearance phrases of visible AUs (what alt-text says when it describes the face).
AU_PHRASES: dict[int, tuple[str, ...]] = {
  1: ("raised inner eyebrows", "worried brows"),
  2: ("raised eyebrows", "arched brows"),
  4: ("furrowed brows", "frowning", "knitted brows"),
  5: ("wide eyes", "wide open eyes"),
  6: ("raised cheeks", "crinkled eyes"),
  7: ("narrowed eyes", "squinting"),
  9: ("wrinkled nose", "scrunched nose"),
  10: ("raised upper lip", "curled upper lip"),
  12: ("big smile", "lip corners pulled up"),
  14: ("dimples", "tight lip corners"),
  15: ("mouth corners down", "downturned mouth"),
  16: ("lower lip pulled down", "showing lower teeth"),
  17: ("raised chin", "pouting chin"),
  20: ("stretched lips", "lips pulled sideways"),
  23: ("tight lips", "thin tight lips"),
  24: ("lips pressed together", "pressed lips"),
  25: ("lips parted", "teeth showing"),
  26: ("mouth open", "jaw dropped", "open mouth"),
}
_HAIR_NAMES = ("black", "dark brown", "brown", "blond", "red", "grey")
_STYLE_NAMES = {
  "bald": ("bald", "shaved head"),
  "short": ("short {c} hair", "short hair"),
  "fringe": ("{c} hair with bangs", "bangs"),
  "side": ("side-parted {c} hair", "{c} hair"),
  "long": ("long {c} hair", "long hair"),
  "curly": ("curly {c} hair", "curly hair"),
  "bun": ("{c} hair in a bun", "hair bun"),
}
_BACKGROUNDS = (
  ("plain background", "studio backdrop"),
  ("striped background", "stripes"),
  ("diagonal stripes background", "patterned wall"),
  ("checkered background", "tiles"),
  ("gradient background", "soft backdrop"),
  ("bokeh background", "blurry background"),
)
_COLOR_NAMES = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
_PHOTO = (
  "a photo of",
  "portrait of",
  "close-up of",
  "headshot of",
  "stock photo of",
  "selfie of",
  "picture of",
  "image of",
  "",
)
_CLUTTER = (
  "stock photo",
  "royalty free",
  "high resolution",
  "hd",
  "free image",
  "#portrait",
  "#face",
  "#people",
  "download",
  "photography",
  "emotions concept",
  "isolated",
)
_SEPARATORS = (", ", ", ", ", ", " - ", " | ", ". ")


@dataclasses.dataclass(frozen=True)
class Rates:
  """How noisy the alt-text is (probabilities per caption); written to captions.json."""

  # The defaults are configs/foundation.py's, what 650 steps on 2 CPU cores can learn from
  # (docs/foundation.md, finding 8); LAION-like alt-text is nearer expression=0.5,
  # attribute=0.6, clutter=0.35.
  expression: float = 0.9  # names an expression at all
  wrong: float = 0.05  # of those: names another expression than the one rendered
  vague: float = 0.05  # of those not wrong: a vague word instead of a specific one
  appearance: float = 0.2  # has appearance phrases of visible AUs
  facs: float = 0.01  # has a FACS name ("lip corner puller")
  attribute: float = 0.0  # each person/photo attribute (hair, glasses, ...) is mentioned
  clutter: float = 0.2  # hashtags, file names, "stock photo"

  def check(self) -> None:
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"caption rate {f.name}={v} is not a probability in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Person:
  name: str  # C00001 ...
  sex: str  # F / M
  identity: render.Identity
  hair: int  # index into _HAIR_NAMES


def make_person(seed: int, index: int) -> Person:
  """Identity ``index`` of the corpus: in-the-wild variation plus age and earrings."""
  rng = population.rng_for(seed, _S_IDENTITY, index)
  sex = "F" if rng.random() < 0.5 else "M"
  ident = render.sample_identity(rng, sex, wild=True)
  age = float(rng.beta(1.3, 2.2))
  hair = int(np.argmin(np.abs(np.asarray(render._HAIR) - ident.hair_color).sum(-1)))  # pylint: disable=protected-access
  if age > 0.7 and rng.random() < 0.7:  # greying with age
    hair = 5
  colour = tuple(int(c) for c in np.asarray(render._HAIR[hair]).round())  # pylint: disable=protected-access
  earrings = int(rng.choice(3, p=[0.5, 0.25, 0.25])) if sex == "F" else int(rng.random() < 0.08)
  ident = dataclasses.replace(ident, age=age, earrings=earrings, hair_color=colour)
  return Person(name=f"{SUBJECT_PREFIX}{index + 1:05d}", sex=sex, identity=ident, hair=hair)


@dataclasses.dataclass(frozen=True)
class Shot:
  """One image of the corpus and its caption."""

  rel: str
  person: Person
  aus: np.ndarray  # [len(AUS)] intensities
  expression: str
  nuisance: render.Nuisance
  jpeg_quality: int
  caption: str
  said: dict[str, Any]  # what the caption says: expression word (and whether right), AUs, facs


def five_points(shot: Shot, size: int) -> list[list[float]]:
  """A detector's five keypoints of the shot's face (image-left eye, image-right eye, nose tip,
  mouth corners) in 0-based pixels of its `size` image, rounded to 0.01 px."""
  s = align.SCHEMES["bp4d49"]
  p = render.face_landmarks(shot.person.identity, shot.aus, size, shot.nuisance, s.name)
  nose_tip = 16  # the middle of BP4D's lower nose row (points 14-18)
  eyes = [p[list(s.left_eye)].mean(0), p[list(s.right_eye)].mean(0)]
  five = [*eyes, p[nose_tip], *p[list(s.mouth)]]
  return [[round(float(x), 2), round(float(y), 2)] for x, y in five]


def _nuisance(rng: np.random.Generator) -> render.Nuisance:
  return render.Nuisance(
    roll=float(np.clip(rng.normal(0, 8), -25, 25)),
    scale=float(rng.uniform(0.85, 1.12)),
    shift=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
    yaw=float(rng.uniform(-0.9, 0.9)),
    gain=float(rng.uniform(0.65, 1.3)),
    gradient=float(rng.uniform(0, 0.55)),
    gradient_angle=float(rng.uniform(0, 6.3)),
    tint=tuple(float(x) for x in rng.uniform(0.82, 1.18, 3)),
    noise=float(rng.uniform(0.5, 7)),
    noise_seed=int(rng.integers(2**31)),
  )


def _expression_aus(rng: np.random.Generator, expression: str) -> np.ndarray:
  aus = population.expression_aus(rng, expression, float(rng.uniform(0.7, 1.2)))
  if expression == "neutral":
    aus = np.where(rng.random(len(aus)) < 0.08, rng.uniform(0.3, 1.3, len(aus)), 0.0)
  if rng.random() < 0.3:  # a non-prototypic extra AU or two: faces are not textbook
    for i in rng.choice(len(aus), size=int(rng.integers(1, 3)), replace=False):
      aus[i] = max(aus[i], rng.uniform(2.0, 4.5))
  return np.clip(aus, 0, 5)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _who(rng: np.random.Generator, person: Person) -> str:
  age = person.identity.age
  if person.sex == "F":
    young, adult, old = ("young woman", "girl", "woman"), ("woman", "lady"), ("older woman",)
  else:
    young, adult, old = ("young man", "boy", "man"), ("man", "guy"), ("older man",)
  if age < 0.3:
    words = young
  elif age < 0.65:
    words = adult + (("middle-aged woman",) if person.sex == "F" else ("middle-aged man",))
  else:
    words = old + (("elderly woman", "senior woman") if person.sex == "F" else ("elderly man",))
  if rng.random() < 0.15:
    return _pick(rng, ("person", "face"))
  return _pick(rng, words)


def _attributes(rng: np.random.Generator, person: Person, n: render.Nuisance, p: float) -> list:
  f = person.identity
  out = []
  if rng.random() < p:
    out.append(_pick(rng, _STYLE_NAMES[f.hair_style]).format(c=_HAIR_NAMES[person.hair]))
  if f.glasses and rng.random() < p + 0.2:
    shape = "round glasses" if f.glasses == 1 else "square glasses"
    out.append(_pick(rng, ("wearing glasses", "glasses", "with eyeglasses", shape)))
  if f.earrings and rng.random() < p - 0.2:
    out.append("earrings" if f.earrings == 1 else "hoop earrings")
  if rng.random() < p - 0.1:
    hue = _COLOR_NAMES[int(_hue(f.bg) * len(_COLOR_NAMES)) % len(_COLOR_NAMES)]
    bg = _pick(rng, _BACKGROUNDS[f.bg_texture])
    out.append(f"{hue} {bg}" if rng.random() < 0.5 else bg)
  if rng.random() < p - 0.2:
    if n.gain < 0.8:
      out.append(_pick(rng, ("dim light", "low light", "dark photo")))
    elif n.gain > 1.18:
      out.append(_pick(rng, ("bright light", "overexposed")))
    elif n.gradient > 0.4:
      out.append(_pick(rng, ("side lighting", "dramatic light")))
    else:
      out.append(_pick(rng, ("natural light", "soft light")))
  if rng.random() < p - 0.2:
    if abs(n.yaw) > 0.55:
      out.append("looking to the " + ("left" if n.yaw > 0 else "right"))
    elif abs(n.roll) > 12:
      out.append("head tilted")
    else:
      out.append(_pick(rng, ("looking at the camera", "front view")))
  return out


def _hue(rgb) -> float:
  r, g, b = (c / 255.0 for c in rgb)
  mx, mn = max(r, g, b), min(r, g, b)
  if mx == mn:
    return 0.0
  if mx == r:
    h = ((g - b) / (mx - mn)) % 6
  elif mx == g:
    h = (b - r) / (mx - mn) + 2
  else:
    h = (r - g) / (mx - mn) + 4
  return h / 6


def caption_for(
  rng: np.random.Generator,
  person: Person,
  expression: str,
  aus: np.ndarray,
  nuisance: render.Nuisance,
  rates: Rates,
  au_names: dict[int, str],
) -> tuple[str, dict[str, Any]]:
  """An alt-text for one image and a record of what it says (for the noise statistics)."""
  said: dict[str, Any] = {"expression_word": "", "expression_said": "", "vague": False}
  parts = []
  if rng.random() < rates.expression:
    if rng.random() < rates.wrong:
      other = [e for e in EXPRESSIONS if e != expression]
      said["expression_said"] = _pick(rng, other)
      word = _pick(rng, EXPRESSION_WORDS[said["expression_said"]])
    elif rng.random() < rates.vague:
      said["vague"] = True
      word = _pick(rng, VAGUE_WORDS)
    else:
      said["expression_said"] = expression
      word = _pick(rng, EXPRESSION_WORDS[expression])
    said["expression_word"] = word
    parts.append(word)
  visible = [au for au in render.AUS if au in AU_PHRASES and aus[render.AU_INDEX[au]] >= 1.5]
  said["aus"] = []
  if visible and rng.random() < rates.appearance:
    k = min(len(visible), int(rng.integers(1, 3)))
    chosen = sorted(rng.choice(visible, size=k, replace=False).tolist())
    said["aus"] = chosen
    parts += [_pick(rng, AU_PHRASES[au]) for au in chosen]
  said["facs"] = []
  if visible and rng.random() < rates.facs:
    au = int(rng.choice(visible))
    said["facs"] = [au]
    parts.append(au_names[au] if rng.random() < 0.6 else f"AU{au} {au_names[au]}")
  attrs = _attributes(rng, person, nuisance, rates.attribute)
  who = _who(rng, person)
  head = _pick(rng, _PHOTO)
  lead = f"{head} a {who}" if head else f"{'an' if who[0] in 'aeiou' else 'a'} {who}"
  if head and who[0] in "aeiou":
    lead = f"{head} an {who}"
  if parts and parts[0] in _ADJECTIVES and who != "face" and rng.random() < 0.6:
    # "a smiling woman", "portrait of an angry man"
    first = parts.pop(0)
    art = "an" if first[0] in "aeiou" else "a"
    lead = f"{head} {art} {first} {who}".strip()
  rest = attrs + parts
  order = rng.permutation(len(rest))
  rest = [rest[i] for i in order]
  if rng.random() < rates.clutter:
    rest.append(_pick(rng, _CLUTTER))
  if rng.random() < rates.clutter * 0.3:
    rest.append(f"IMG_{int(rng.integers(1000, 9999))}.jpg")
  sep = _pick(rng, _SEPARATORS)
  text = sep.join([lead] + rest) if rest else lead
  if rng.random() < 0.3:
    text = text[0].upper() + text[1:]
  return text, said


def plan(
  seed: int, identities: int, images_per_identity: int, rates: Rates, validation: float = 0.05
) -> list[Shot]:
  """Every image of the corpus (cheap: no pixels), in manifest order."""
  from clef_jax import prompts  # pylint: disable=import-outside-toplevel

  au_names = {au: prompts.au_name(au) for au in render.AUS}
  names = list(_EXPRESSION_PRIOR)
  prior = np.array([_EXPRESSION_PRIOR[e] for e in names])
  prior /= prior.sum()
  n_val = max(1, int(round(identities * validation))) if identities > 1 and validation else 0
  shots = []
  for i in range(identities):
    person = make_person(seed, i)
    split = "validation" if i >= identities - n_val else "train"
    for j in range(images_per_identity):
      rng = population.rng_for(seed, _S_IMAGE, i, j)
      expression = names[int(rng.choice(len(names), p=prior))]
      aus = _expression_aus(rng, expression)
      nuis = _nuisance(rng)
      caption, said = caption_for(rng, person, expression, aus, nuis, rates, au_names)
      said["split"] = split
      shots.append(
        Shot(
          rel=f"images/{person.name}_{j:02d}.jpg",
          person=person,
          aus=aus,
          expression=expression,
          nuisance=nuis,
          jpeg_quality=int(rng.integers(55, 96)),
          caption=caption,
          said=said,
        )
      )
  return shots


def noise_stats(shots: Sequence[Shot]) -> dict[str, Any]:
  """Measured shares: expression words, wrong ones, vague ones, AU phrases, FACS names."""
  n = len(shots)
  named = [s for s in shots if s.said["expression_word"]]
  specific = [s for s in named if not s.said["vague"]]
  wrong = [s for s in specific if s.said["expression_said"] != s.expression]
  by_expr = collections.Counter(s.expression for s in shots)
  return {
    "captions": n,
    "share_with_expression_word": len(named) / max(n, 1),
    "share_of_those_wrong": len(wrong) / max(len(named), 1),
    "share_of_those_vague": (len(named) - len(specific)) / max(len(named), 1),
    "share_with_au_phrase": sum(bool(s.said["aus"]) for s in shots) / max(n, 1),
    "share_with_facs_name": sum(bool(s.said["facs"]) for s in shots) / max(n, 1),
    "mean_words": float(np.mean([len(s.caption.split()) for s in shots])) if shots else 0.0,
    "rendered_expressions": {e: by_expr.get(e, 0) for e in EXPRESSIONS},
  }


def generate(
  out_dir: str | os.PathLike[str],
  *,
  seed: int = 0,
  identities: int = 400,
  images_per_identity: int = 16,
  size: int = 112,
  rates: Rates | None = None,
  progress: bool = True,
  overwrite: bool = False,
  workers: int | None = None,
) -> dict[str, Any]:
  """Writes the corpus into ``out_dir`` (built beside it, renamed into place when complete)."""
  rates = rates or Rates()
  rates.check()
  if identities < 1 or images_per_identity < 1:
    raise ValueError(
      f"identities={identities} and images_per_identity={images_per_identity} must be >= 1"
    )
  if size < 16:
    raise ValueError(f"size must be at least 16 px, got {size}")
  out = pathlib.Path(out_dir).absolute()
  writer._prepare_target(out, overwrite)  # pylint: disable=protected-access
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.captions-tmp-{os.getpid()}"
  if tmp.exists():
    shutil.rmtree(tmp)
  (tmp / "images").mkdir(parents=True)
  try:
    shots = plan(seed, identities, images_per_identity, rates)
    items = [(s.rel, s.person.identity, s.aus, s.nuisance, s.jpeg_quality, None) for s in shots]
    chunk = 64
    jobs = [(str(tmp), size, items[k : k + chunk]) for k in range(0, len(items), chunk)]
    workers = workers or min(2, os.cpu_count() or 1)
    with tqdm.tqdm(
      total=len(items), unit="img", desc="SynthFace-Captions", disable=not progress, file=sys.stderr
    ) as bar:
      if workers <= 1:
        for j in jobs:
          bar.update(writer._render_job(j))  # pylint: disable=protected-access
      else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
          for k in pool.imap_unordered(writer._render_job, jobs):  # pylint: disable=protected-access
            bar.update(k)
    with open(tmp / "manifest.jsonl", "w", encoding="utf-8", newline="\n") as f:
      for s in shots:
        row = {"path": s.rel, "caption": s.caption, "subject": s.person.name}
        row["split"] = s.said["split"]
        row["landmarks"] = five_points(s, size)
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(tmp / "truth.jsonl", "w", encoding="utf-8", newline="\n") as f:
      for s in shots:
        aus = {str(au): round(float(s.aus[render.AU_INDEX[au]]), 3) for au in render.AUS}
        row = {"path": s.rel, "expression": s.expression, "aus": aus, **s.said}
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    stats = noise_stats(shots)
    summary = {
      "generator": GENERATOR,
      "version": VERSION,
      "seed": seed,
      "identities": identities,
      "images_per_identity": images_per_identity,
      "images": len(shots),
      "size": size,
      "rates": dataclasses.asdict(rates),
      "measured": stats,
      "subject_prefix": SUBJECT_PREFIX,
    }
    with open(tmp / "captions.json", "w", encoding="utf-8", newline="\n") as f:
      json.dump(summary, f, indent=1, sort_keys=True)
      f.write("\n")
    writer._prepare_target(out, overwrite)  # pylint: disable=protected-access
    if out.is_dir():
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {**summary, "out": str(out)}


def describe(summary: dict[str, Any]) -> str:
  """Human-readable lines: sizes, the rates asked for and the shares measured."""
  m = summary["measured"]
  r = summary["rates"]
  return "\n".join(
    [
      f"SynthFace-Captions v{summary['version']} (seed {summary['seed']}): {summary['images']} "
      f"images of {summary['identities']} identities at {summary['size']} px",
      f"  expression word: {m['share_with_expression_word']:.1%} of captions "
      f"(rate {r['expression']}); wrong: {m['share_of_those_wrong']:.1%} of those "
      f"(rate {r['wrong']}); vague: {m['share_of_those_vague']:.1%}",
      f"  AU appearance phrase: {m['share_with_au_phrase']:.1%} (rate {r['appearance']}); "
      f"FACS name: {m['share_with_facs_name']:.1%} (rate {r['facs']}); "
      f"{m['mean_words']:.1f} words per caption",
    ]
  )


def contact_sheet(
  seed: int = 0, n: int = 24, size: int = 96, rates: Rates | None = None
) -> Image.Image:
  """The first `n` images of the corpus (seed) with their captions, wrapped, 4 per row."""

  shots = plan(seed, max(1, (n + 3) // 4), 4, rates or Rates())[:n]
  cols, text_w, line_h = 4, 230, 12
  tile_w, tile_h = size + text_w, max(size, 7 * line_h) + 6
  sheet = Image.new("RGB", (cols * tile_w, ((n + cols - 1) // cols) * tile_h), (250, 250, 250))
  draw = ImageDraw.Draw(sheet)
  for k, s in enumerate(shots):
    x, y = (k % cols) * tile_w, (k // cols) * tile_h
    img = render.render_face(s.person.identity, s.aus, size, s.nuisance)
    sheet.paste(Image.fromarray(img), (x + 3, y + 3))
    words, lines = s.caption.split(), [""]
    for w in words:  # ~38 characters per line of Pillow's default font
      if len(lines[-1]) + len(w) + 1 > 38:
        lines.append("")
      lines[-1] = f"{lines[-1]} {w}".strip()
    lines = lines[:6] + [f"[rendered: {s.expression}]"]
    for i, line in enumerate(lines):
      colour = (110, 110, 110) if i == len(lines) - 1 else (20, 20, 20)
      draw.text((x + size + 8, y + 3 + i * line_h), line, fill=colour)
  return sheet


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m input_pipeline.synthface.captions",
    description="Generate SynthFace-Captions (faces with noisy alt-text, a manifest) into --out.",
  )
  ap.add_argument("--out", help="target folder (created)")
  ap.add_argument("--sheet", help="instead: draw a contact sheet with captions to this PNG")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--identities", type=int, default=400)
  ap.add_argument("--images-per-identity", type=int, default=16)
  ap.add_argument("--size", type=int, default=112)
  for f in dataclasses.fields(Rates):
    ap.add_argument(f"--{f.name}-rate", type=float, default=f.default, dest=f"rate_{f.name}")
  ap.add_argument("--workers", type=int, default=None)
  ap.add_argument("--overwrite", action="store_true")
  ap.add_argument("--quiet", action="store_true")
  a = ap.parse_args(argv)
  rates = Rates(**{f.name: getattr(a, f"rate_{f.name}") for f in dataclasses.fields(Rates)})
  if a.sheet:
    sheet = contact_sheet(a.seed, rates=rates)
    sheet.quantize(256).save(a.sheet, optimize=True)
    print(f"wrote {a.sheet} ({sheet.size[0]}x{sheet.size[1]})")
    return 0
  if not a.out:
    ap.error("--out (or --sheet) is required")
  try:
    s = generate(
      a.out,
      seed=a.seed,
      identities=a.identities,
      images_per_identity=a.images_per_identity,
      size=a.size,
      rates=rates,
      progress=not a.quiet,
      overwrite=a.overwrite,
      workers=a.workers,
    )
  except (ValueError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not a.quiet:
    print(describe(s))
    print(f"  -> {s['out']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
