"""SynthFace-Captions: deterministic, noisy as configured, and disjoint from the evaluation data."""

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import pytest

from input_pipeline.readers import manifest
from input_pipeline.synthface import captions
from input_pipeline.synthface import population
from input_pipeline.synthface import render
from input_pipeline.synthface import writer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = tmp_path_factory.mktemp("captions") / "c"
  summary = captions.generate(out, identities=10, images_per_identity=3, size=32, progress=False)
  return out, summary


def _files(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_any_workers(corpus, tmp_path):
  out, _ = corpus
  again = tmp_path / "again"
  captions.generate(again, identities=10, images_per_identity=3, size=32, progress=False, workers=1)
  assert _files(again) == _files(out)
  other = tmp_path / "other"
  captions.generate(other, seed=1, identities=10, images_per_identity=3, size=32, progress=False)
  assert (other / "manifest.jsonl").read_bytes() != (out / "manifest.jsonl").read_bytes()


def test_layout_goes_through_the_manifest_reader(corpus):
  out, summary = corpus
  rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
  assert len(rows) == summary["images"] == 30
  assert {r["split"] for r in rows} == {"train", "validation"}
  examples = list(manifest.read(out))
  assert [e["caption"] for e in examples] == [r["caption"] for r in rows]
  assert all(e["caption"] and e["image"].shape == (32, 32, 3) for e in examples)
  assert [e["subject"] for e in examples] == [r["subject"] for r in rows]
  assert json.loads((out / "captions.json").read_text())["rates"] == dataclasses.asdict(
    captions.Rates()
  )


def test_noise_rates_are_what_was_asked():
  """Measured on a large plan (no pixels) against the configured rates (binomial tolerance)."""
  rates = captions.Rates(expression=0.5, wrong=0.2, vague=0.25, appearance=0.3, facs=0.02)
  shots = captions.plan(0, 300, 10, rates)
  m = captions.noise_stats(shots)
  n = len(shots)
  assert abs(m["share_with_expression_word"] - 0.5) < 4 * np.sqrt(0.25 / n)
  named = m["share_with_expression_word"] * n
  assert abs(m["share_of_those_vague"] - 0.8 * 0.25) < 4 * np.sqrt(0.2 * 0.8 / named)
  # Wrong among the specific ones: P(wrong) / (P(wrong) + P(right)) = 0.2 / (0.2 + 0.8 * 0.75).
  specific = named * (1 - m["share_of_those_vague"])
  wrong = m["share_of_those_wrong"] * named / specific
  assert abs(wrong - 0.2 / 0.8) < 4 * np.sqrt(0.25 * 0.75 / specific)
  # AU phrases only when some AU is visible: at most the rate, and most of it.
  assert 0.2 < m["share_with_au_phrase"] <= 0.3 + 4 * np.sqrt(0.21 / n)
  assert 0.005 < m["share_with_facs_name"] < 0.035
  # What is said is true where it is meant to be: right words name the rendered expression,
  # AU phrases name AUs that are visible (intensity >= 1.5).
  for s in shots:
    if s.said["expression_word"] and not s.said["vague"]:
      words = captions.EXPRESSION_WORDS[s.said["expression_said"]]
      assert s.said["expression_word"] in words
    for au in s.said["aus"]:
      assert s.aus[render.AU_INDEX[au]] >= 1.5
  # Most captions describe the person or the photo without any expression word.
  plain = [s for s in shots if not s.said["expression_word"] and not s.said["aus"]]
  assert len(plain) > 0.3 * n


def test_no_identity_is_an_evaluation_identity(corpus):
  """Zero-shot on the RAF-like test set must be zero-shot: the corpus has its own people."""
  seed = 0
  people = [captions.make_person(seed, i) for i in range(200)]
  faces = {
    dataclasses.astuple(dataclasses.replace(p.identity, age=0.0, earrings=0)) for p in people
  }
  names = [population.subject_names(41)[i] for i in range(41)]
  bp4d = {
    dataclasses.astuple(population.make_subject(seed, i, n).identity) for i, n in enumerate(names)
  }
  raf = {dataclasses.astuple(population.make_raf_image(seed, i).identity) for i in range(3000)}
  assert not faces & bp4d and not faces & raf
  # Nor is any image of theirs: the corpus's JPEGs against SynthFace's own, same seed and size.
  out, _ = corpus
  ours = {hashlib.sha256(b).hexdigest() for k, b in _files(out).items() if k.endswith(".jpg")}
  theirs = set()
  for i in range(200):
    r = population.make_raf_image(seed, i)
    img = writer.aligned_face(r.identity, r.aus, 32, r.nuisance)
    theirs.add(hashlib.sha256(writer.encode_jpeg(img, r.jpeg_quality)).hexdigest())
  assert ours and not ours & theirs
  subjects = {
    json.loads(line)["subject"] for line in (out / "manifest.jsonl").read_text().splitlines()
  }
  assert all(s.startswith(captions.SUBJECT_PREFIX) for s in subjects) and not subjects & set(names)


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="wrong=1.5 is not a probability"):
    captions.generate(tmp_path / "x", rates=captions.Rates(wrong=1.5), progress=False)
  with pytest.raises(ValueError, match="identities=0"):
    captions.generate(tmp_path / "x", identities=0, progress=False)
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    captions.generate(tmp_path / "full", identities=1, images_per_identity=1, progress=False)
  assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_age_and_earrings_draw_only_when_set():
  """The new identity fields leave every existing SynthFace image as it was."""
  rng = np.random.default_rng(0)
  ident = render.sample_identity(rng, "F", wild=True)
  aus = np.zeros(len(render.AUS))
  base = render.render_face(ident, aus, 64)
  assert np.array_equal(base, render.render_face(dataclasses.replace(ident, age=0.0), aus, 64))
  for change in (dict(age=0.9), dict(earrings=2)):
    assert not np.array_equal(
      base, render.render_face(dataclasses.replace(ident, **change), aus, 64)
    )


def test_manifest_landmarks_put_the_rendered_eyes_on_the_template(corpus):
  """The five points of a photo align it (any roll, yaw, scale, shift) so that the renderer's
  dark pupils, found without landmarks, sit on the template's eye
  centres (±2 px at 112 px); rows read with landmarks=True carry them as scheme 'five'."""
  from input_pipeline import align  # pylint: disable=import-outside-toplevel

  out, _ = corpus
  rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
  assert all(np.asarray(r["landmarks"]).shape == (5, 2) for r in rows)
  ex = next(manifest.read(out, landmarks=True))
  assert ex["landmark_scheme"] == "five"
  np.testing.assert_allclose(ex["landmarks"], rows[0]["landmarks"], atol=1e-4)
  size = 112
  # Open eyes without glasses, so the darkest pixels are the pupils: squinting AUs (6, 7) cover
  # them and dark frames pull the finder off by 2 px or more. The pose (roll, yaw, scale,
  # shift) stays each photo's own.
  shots = captions.plan(0, 10, 3, captions.Rates())
  for shot in shots[:12]:
    ident = dataclasses.replace(shot.person.identity, glasses=0)
    person = dataclasses.replace(shot.person, identity=ident)
    shot = dataclasses.replace(shot, person=person, aus=np.zeros_like(shot.aus))
    img = render.render_face(shot.person.identity, shot.aus, size, shot.nuisance)
    crop = align.align(img, np.asarray(captions.five_points(shot, size)), "five", size)
    grey = crop.astype(np.float64).mean(-1)
    for t in align.template()[:2] * size - 0.5:
      x0, y0 = int(t[0]) - 8, int(t[1]) - 8
      win = grey[y0 : y0 + 17, x0 : x0 + 17]
      ys, xs = np.nonzero(win <= np.percentile(win, 4))
      np.testing.assert_allclose([xs.mean() + x0, ys.mean() + y0], t, atol=2.0)


def test_a_corpus_from_an_older_generator_is_made_again(tmp_path):
  """A raw corpus whose captions.json names another generator version (1.0 had no landmarks)
  is regenerated and prepared again, instead of being prepared with every row skipped."""
  from input_pipeline import sources  # pylint: disable=import-outside-toplevel

  args = dict(identities=3, images_per_identity=2, size=32)
  path = sources.ensure_synthface_captions(tmp_path, **args)
  raw = tmp_path / sources.CAPTIONS_RAW
  summary = json.loads((raw / "captions.json").read_text())
  (raw / "captions.json").write_text(json.dumps({**summary, "version": "1.0"}))
  rows = (raw / "manifest.jsonl").read_text().splitlines()
  (raw / "manifest.jsonl").write_text(
    "".join(
      json.dumps({k: v for k, v in json.loads(r).items() if k != "landmarks"}) + "\n" for r in rows
    )
  )
  assert sources.ensure_synthface_captions(tmp_path, **args) == path
  assert json.loads((raw / "captions.json").read_text())["version"] == captions.VERSION
  assert all(
    "landmarks" in json.loads(r) for r in (raw / "manifest.jsonl").read_text().splitlines()
  )
  assert sources.info("manifest", tmp_path, sources.CAPTIONS_CONFIG)["num_examples"]["train"] > 0
