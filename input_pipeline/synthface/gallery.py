"""Contact sheet of SynthFace: ``python -m input_pipeline.synthface.gallery --out PNG``.

Sections: every AU alone at intensity 0 / 3 / 5 on one subject; every expression (noisy
prototype) on several subjects; one episode strip (a subject doing T1, with per-frame expression
and the AUs that are on); BP4D-like full video frames with their 49 tracked points and the
crops preparation aligns from them; a row of RAF-like in-the-wild images with their labels.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import activities
from input_pipeline import align
from input_pipeline import schema
from input_pipeline.synthface import population
from input_pipeline.synthface import render
from input_pipeline.synthface import writer

_LABEL_H = 14
# FACS names of the rendered AUs, for the captions only.
_AU_CAPTIONS: dict[int, str] = {
  1: "inner brow raiser",
  2: "outer brow raiser",
  4: "brow lowerer",
  5: "upper lid raiser",
  6: "cheek raiser",
  7: "lid tightener",
  9: "nose wrinkler",
  10: "upper lip raiser",
  11: "nasolabial deepener",
  12: "lip corner puller",
  14: "dimpler",
  15: "lip corner depressor",
  16: "lower lip depressor",
  17: "chin raiser",
  20: "lip stretcher",
  23: "lip tightener",
  24: "lip pressor",
  25: "lips part",
  26: "jaw drop",
}
_BG = (250, 250, 250)


def _tile(img: np.ndarray, text: str, width: int) -> Image.Image:
  """Image with a one-line caption above it, centred in ``width`` pixels."""
  h, w = img.shape[:2]
  t = Image.new("RGB", (width, h + _LABEL_H), _BG)
  t.paste(Image.fromarray(img), ((width - w) // 2, _LABEL_H))
  ImageDraw.Draw(t).text((2, 1), text, fill=(20, 20, 20))
  return t


def _title(text: str, width: int) -> Image.Image:
  t = Image.new("RGB", (width, 20), (225, 230, 240))
  ImageDraw.Draw(t).text((6, 4), text, fill=(0, 0, 0))
  return t


def _grid(tiles: list[Image.Image], cols: int, width: int) -> Image.Image:
  tw, th = tiles[0].size
  rows = (len(tiles) + cols - 1) // cols
  g = Image.new("RGB", (width, rows * th), _BG)
  for i, t in enumerate(tiles):
    g.paste(t, ((i % cols) * tw, (i // cols) * th))
  return g


def contact_sheet(seed: int = 0, size: int = 96, subjects: int = 12) -> Image.Image:
  """Builds the sheet (RGB); same seed => same pixels."""
  cols = 12
  width = cols * size
  names = population.subject_names(41)
  people = [population.make_subject(seed, i, names[i * 7 % 41]) for i in range(subjects)]
  parts = [
    _title("SynthFace: each AU alone at intensity 0 / 3 / 5 (one subject, no nuisance)", width)
  ]
  tiles = []
  for au in render.AUS:
    for x in (0, 3, 5):
      img = render.render_face(people[0].identity, {au: x}, size)
      tiles.append(_tile(img, f"AU{au} {x}" if x else f"AU{au} " + _AU_CAPTIONS[au][:14], size))
  parts.append(_grid(tiles, cols, width))
  parts.append(_title("Expressions (noisy prototypes, one row each) on several subjects", width))
  tiles = []
  for e in schema.expressions():
    for k, s in enumerate(people):
      rng = population.rng_for(seed, 99, schema.expression_index(e), k)
      a = population.expression_aus(rng, e, 1.0) if e != "neutral" else np.zeros(len(render.AUS))
      on = [str(au) for au, v in zip(render.AUS, a) if v >= 1.5]
      tiles.append(
        _tile(
          render.render_face(s.identity, a, size),
          f"{e[:9]} " + "+".join(on) if k == 0 else "+".join(on),
          size,
        )
      )
    tiles += [Image.new("RGB", tiles[-1].size, _BG)] * ((cols - len(people)) % cols)
  parts.append(_grid(tiles, cols, width))
  parts.append(
    _title(
      "Episode strip: subject doing T1 ("
      + activities.activity_text("bp4d", "T1")
      + "), frame, expression, AUs coded 1",
      width,
    )
  )
  sess = population.make_session(seed, 0, people[0], "T1", 24)
  tiles = []
  for k in range(0, 24, 2):
    on = [str(au) for au, c in zip(render.AUS, population.occurrence_codes(sess.aus[k])) if c]
    img = render.render_face(people[0].identity, sess.aus[k], size, sess.nuisance[k])
    tiles.append(_tile(img, f"{sess.frames[k]} {sess.expressions[k][:5]} " + "+".join(on), size))
  parts.append(_grid(tiles, cols, width))
  parts.append(
    _title(
      "BP4D-like full frames (the face moving, 49 tracked points) and the crops aligned from "
      "them (eyes and mouth on the template)",
      width,
    )
  )
  tiles = []
  for k in range(6):
    subj = people[k + 1]
    sess = population.make_session(seed, k + 1, subj, population.TASKS[k], 8)
    t = 7 * k % 8
    place = render.frame_placement(size, sess.head[t], sess.wall)
    frame, pts = render.render_frame(subj.identity, sess.aus[t], size, sess.nuisance[t], place)
    crop = align.align(frame, pts + 1.0, "bp4d49", size)
    h = round(size * frame.shape[0] / frame.shape[1])
    im = Image.fromarray(frame).resize((size, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(im)
    for x, y in (pts + 0.5) * (size / frame.shape[1]) - 0.5:
      draw.point((float(x), float(y)), fill=(255, 40, 40))
    box = Image.new("RGB", (size, size), _BG)
    box.paste(im, (0, (size - h) // 2))
    tiles.append(_tile(np.asarray(box), f"{subj.name} {population.TASKS[k]} frame", size))
    tiles.append(_tile(crop, "aligned", size))
  parts.append(_grid(tiles, cols, width))
  parts.append(_title("RAF-like aligned (other identities, pose, light, background)", width))
  tiles = []
  for i in range(cols):
    im = population.make_raf_image(seed, i)
    tiles.append(
      _tile(
        writer.aligned_face(im.identity, im.aus, size, im.nuisance),
        f"{im.label} {population.RAF_LABELS[im.label - 1]}",
        size,
      )
    )
  parts.append(_grid(tiles, cols, width))
  sheet = Image.new("RGB", (width, sum(p.size[1] for p in parts)), _BG)
  y = 0
  for p in parts:
    sheet.paste(p, (0, y))
    y += p.size[1]
  return sheet


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m input_pipeline.synthface.gallery",
    description="Draw a SynthFace contact sheet to a PNG file.",
  )
  ap.add_argument("--out", required=True, help="PNG path")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--size", type=int, default=96, help="tile side in pixels")
  a = ap.parse_args(argv)
  out = pathlib.Path(a.out)
  if out.suffix.lower() != ".png":
    print(f"error: --out must end in .png, got {out}", file=sys.stderr)
    return 2
  out.parent.mkdir(parents=True, exist_ok=True)
  sheet = contact_sheet(a.seed, a.size)
  sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
  print(f"wrote {out} ({sheet.size[0]}x{sheet.size[1]}, {out.stat().st_size // 1024} KiB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
