"""Using a trained model: `clef_jax.export` of a run and `clef_jax.predict` on images and videos.

Two tiny fine-tuning runs on the session's tiny SynthFace (an AU run with CLEF's text head, a FER
run with the linear head) are exported and checked against transformers' CLIPModel on CPU, used
as the independent reference: its image and text towers, fed the exported folder and tokenizer,
recompute each run's head from the run's own head parameters (text head: s_au·cos(z, names) + b;
linear head: W·sqrt(D)·z + b). `predict` runs on a folder of SynthFace images, a short AVI
written here with PyAV, a manifest and broken inputs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from PIL import Image

from clef_jax import checkpoint as ckpt_lib
from clef_jax import export
from clef_jax import heads as heads_lib
from clef_jax import objectives
from clef_jax import predict
from clef_jax import pretrained
from clef_jax import tokenizer as tokenizer_lib
from clef_jax import train
from clef_jax.models import vit
from configs import finetune_au
from configs import finetune_fer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device is faster


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data_dir):
  """{'au': workdir, 'fer': workdir}: 3-step tiny fine-tunes (AU text head, FER linear head)."""
  flags.FLAGS.mark_as_parsed()
  root = tmp_path_factory.mktemp("predict_runs")
  out = {}
  for task, module, overrides in (
    ("au", finetune_au, {}),
    ("fer", finetune_fer, {"head": "linear"}),
  ):
    c = module.get_config("tiny")
    c.data.data_dir = tiny_data_dir
    c.total_steps = c.checkpoint_every_steps = 3
    for k, v in overrides.items():
      c.finetune[k] = v
    out[task] = str(root / task)
    train.run(c, out[task])
  return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
  root = tmp_path_factory.mktemp("exported")
  return {task: export.export_run(w, root / task) for task, w in runs.items()}


@pytest.fixture(scope="module")
def faces(tiny_data_dir):
  """SynthFace RAF-like images (32 px) and their paths."""
  import glob  # pylint: disable=g-import-not-at-top

  paths = sorted(glob.glob(os.path.join(tiny_data_dir, "**", "*_aligned.jpg"), recursive=True))[:10]
  assert len(paths) == 10
  return paths, [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _torch_embed(folder, images: np.ndarray):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  model = transformers.CLIPModel.from_pretrained(str(folder)).eval()
  x = (images / 255.0 - np.asarray(vit.CLIP_MEAN)) / np.asarray(vit.CLIP_STD)
  with torch.no_grad():
    z = model.get_image_features(
      pixel_values=torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)
    )
    z = getattr(z, "pooler_output", z)
  z = z.numpy().astype(np.float64)
  return model, z / np.linalg.norm(z, axis=-1, keepdims=True)


def _torch_text(model, folder, texts: list[str], length: int) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  tok = transformers.AutoTokenizer.from_pretrained(str(folder))
  ids = tok(texts, padding="max_length", max_length=length, truncation=True)["input_ids"]
  with torch.no_grad():
    z = model.get_text_features(input_ids=torch.tensor(ids))
    z = getattr(z, "pooler_output", z)
  z = z.numpy().astype(np.float64)
  return z / np.linalg.norm(z, axis=-1, keepdims=True)


def _model_inputs(images, size):
  return np.stack([predict.to_input(im, size)[0] for im in images])


# ------------------------------------------------------------------------------------------
# Export.
# ------------------------------------------------------------------------------------------


def test_export_writes_clip_folder_and_heads(exported, runs):
  for task, folder in exported.items():
    names = sorted(p.name for p in folder.iterdir())
    for want in (
      "config.json",
      "model.safetensors",
      "tokenizer.json",
      "tokenizer_config.json",
      "README.md",
      heads_lib.JSON_NAME,
      heads_lib.TENSORS_NAME,
    ):
      assert want in names, (task, names)
    meta = json.loads((folder / heads_lib.JSON_NAME).read_text())
    assert meta["format"] == "clef-heads" and meta["version"] == 1
    (entry,) = meta["heads"]
    assert entry["task"] == task
    assert entry["output"] == ("sigmoid" if task == "au" else "softmax")
    labels = json.loads(open(os.path.join(runs[task], "labels.json")).read())["labels"]
    assert entry["labels"] == labels
  assert (
    json.loads((exported["au"] / heads_lib.JSON_NAME).read_text())["heads"][0]["trained_head"]
    == "text"
  )
  assert (
    json.loads((exported["fer"] / heads_lib.JSON_NAME).read_text())["heads"][0]["trained_head"]
    == "linear"
  )
  readme = (exported["au"] / "README.md").read_text()
  assert "clef_heads.json" in readme and "step 3" in readme


def test_exported_tokenizer_matches_the_embedded_one(exported):
  import transformers  # pylint: disable=g-import-not-at-top

  texts = ["A photo of a  Person SMILING.", "lip corner puller", "naïve café", ""]
  ours = tokenizer_lib.get("embedded", 48)(texts)
  hf = transformers.AutoTokenizer.from_pretrained(str(exported["au"]))
  theirs = np.asarray(hf(texts, padding="max_length", max_length=48, truncation=True)["input_ids"])
  np.testing.assert_array_equal(theirs, ours)
  # ... and our loader runs the exported folder as the embedded tokenizer.
  np.testing.assert_array_equal(tokenizer_lib.get(str(exported["au"]), 48)(texts), ours)


def test_au_text_head_matches_transformers(exported, runs, faces):
  """s_au·cos(z, names) + b, recomputed with transformers' two towers, equals the export."""
  _, images = faces
  folder = exported["au"]
  (head,) = heads_lib.load(folder)
  cfg, params = ckpt_lib.load_params(runs["au"])
  size = cfg["model"]["image_size"]
  model, z = _torch_embed(folder, _model_inputs(images, size))
  texts = objectives.label_texts("au", list(head.labels))["names"]  # [T][J]
  ctx = cfg["model"]["context_length"]
  names = np.mean([_torch_text(model, folder, row, ctx) for row in texts], axis=0)
  names /= np.linalg.norm(names, axis=-1, keepdims=True)
  s_au = math.exp(float(params["heads"]["au_logit_scale"]))
  want = s_au * z @ names.T + np.asarray(params["heads"]["au_bias"], np.float64)
  np.testing.assert_allclose(head.logits(z.astype(np.float32)), want, atol=1e-4, rtol=0)
  # The run's own predictor (our towers) agrees with the torch reference end to end.
  ours = predict.Predictor(f"clef:{runs['au']}")(images)
  np.testing.assert_allclose(ours.z, z, atol=1e-5)
  np.testing.assert_allclose(ours.au_prob, 1 / (1 + np.exp(-want)), atol=1e-4)
  np.testing.assert_array_equal(ours.au, (want >= 0).astype(np.int8))


def test_fer_linear_head_matches_transformers(exported, runs, faces):
  _, images = faces
  folder = exported["fer"]
  (head,) = heads_lib.load(folder)
  cfg, params = ckpt_lib.load_params(runs["fer"])
  _, z = _torch_embed(folder, _model_inputs(images, cfg["model"]["image_size"]))
  lin = params["heads"]["linear"]
  want = math.sqrt(z.shape[1]) * z @ np.asarray(lin["kernel"], np.float64) + lin["bias"]
  np.testing.assert_allclose(head.logits(z.astype(np.float32)), want, atol=1e-4, rtol=0)
  p = predict.Predictor(f"hf:{folder}")(images)
  e = np.exp(want - want.max(-1, keepdims=True))
  np.testing.assert_allclose(p.fer_prob, e / e.sum(-1, keepdims=True), atol=1e-4)
  np.testing.assert_array_equal(p.fer, np.argmax(want, -1))
  assert (
    list(p.classes) == json.loads(open(os.path.join(runs["fer"], "labels.json")).read())["labels"]
  )


def test_export_round_trips_through_our_loader(exported, runs):
  cfg, params = ckpt_lib.load_params(runs["au"])
  mc, loaded = pretrained.load(f"hf:{exported['au']}")
  assert (
    mc.image_size == cfg["model"]["image_size"]
    and mc.vision_layers == cfg["model"]["vision_layers"]
  )
  flat_a = {"/".join(k): v for k, v in _flatten(loaded).items()}
  flat_b = {
    "/".join(k): v
    for k, v in _flatten({k: params[k] for k in ("visual", "text", "logit_scale")}).items()
  }
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_allclose(flat_a[k], flat_b[k], atol=0, err_msg=k)


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = np.asarray(v)
  return out


def test_export_cli_and_its_errors(runs, tmp_path):
  out = tmp_path / "cli"
  cmd = [sys.executable, "-m", "clef_jax.export", f"--workdir={runs['fer']}", f"--out={out}"]
  r = subprocess.run(cmd + ["--dtype=bfloat16"], cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert "clef_heads.json" in r.stdout and (out / "model.safetensors").is_file()
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  # A non-empty --out is kept and named.
  r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert r.returncode == 1 and "is not empty" in r.stderr and "Traceback" not in r.stderr
  # A folder that is not a run.
  bad = tmp_path / "not_a_run"
  bad.mkdir()
  r = subprocess.run(
    [sys.executable, "-m", "clef_jax.export", f"--workdir={bad}", f"--out={tmp_path / 'x'}"],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 1 and "config.json missing" in r.stderr and "Traceback" not in r.stderr
  assert not (tmp_path / "x").exists()


def test_heads_side_file_errors(exported, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top

  folder = tmp_path / "h"
  shutil.copytree(exported["au"], folder)
  (folder / heads_lib.TENSORS_NAME).write_bytes(b"\x00" * 16)
  with pytest.raises(ValueError, match=r"clef_heads.safetensors: unreadable"):
    heads_lib.load(folder)
  meta = json.loads((exported["au"] / heads_lib.JSON_NAME).read_text())
  meta["version"] = 7
  (folder / heads_lib.JSON_NAME).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=r"version 7"):
    heads_lib.load(folder)
  (folder / heads_lib.JSON_NAME).unlink()
  assert heads_lib.load(folder) == []  # a plain CLIP folder has no head


# ------------------------------------------------------------------------------------------
# Predict.
# ------------------------------------------------------------------------------------------


def _write_avi(path, frames: list[np.ndarray], fps: int = 10) -> None:
  import av  # pylint: disable=g-import-not-at-top

  h, w = frames[0].shape[:2]
  with av.open(str(path), "w") as c:
    s = c.add_stream("mjpeg", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuvj420p"
    for f in frames:
      for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(packet)
    for packet in s.encode():
      c.mux(packet)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, faces):
  """A folder: 6 images (2 in a subfolder), a non-square image, a broken JPEG, a 12-frame AVI."""
  paths, images = faces
  d = tmp_path_factory.mktemp("inputs")
  (d / "sub").mkdir()
  for i, im in enumerate(images[:6]):
    Image.fromarray(im).save(d / ("sub" if i >= 4 else "") / f"face{i}.png")
  wide = np.concatenate(
    [np.zeros((32, 8, 3), np.uint8), images[6], np.zeros((32, 8, 3), np.uint8)], 1
  )
  Image.fromarray(wide).save(d / "wide.png")
  (d / "broken.jpg").write_bytes(open(paths[0], "rb").read()[:100])  # a truncated JPEG
  _write_avi(d / "clip.avi", [images[i % 4] for i in range(12)])
  return d


def test_predict_cli_folder_with_video_and_broken_file(runs, inputs, tmp_path, faces):
  out = tmp_path / "pred"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "clef_jax.predict",
      f"--init=clef:{runs['au']}",
      f"--inputs={inputs}",
      f"--out={out}",
      "--prompts=a person smiling,a person frowning",
      "--batch_size=8",
      "--no_detect",  # the inputs are aligned 32 px crops
    ],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 0, r.stderr
  assert "19 faces from 9 files (1 videos)" in r.stdout  # 7 images + 12 frames; broken.jpg left out
  assert "1 inputs could not be read" in r.stdout and "broken.jpg" in r.stdout
  errors = (out / "errors.txt").read_text().splitlines()
  assert len(errors) == 1 and errors[0].startswith(str(inputs / "broken.jpg"))
  with open(out / "predictions.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 19
  jsonl = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
  assert [(j["file"], j["frame"]) for j in jsonl] == [
    (t["file"], int(t["frame"]) if t["frame"] else None) for t in table
  ]
  video = [j for j in jsonl if j["file"].endswith("clip.avi")]
  assert [j["frame"] for j in video] == list(range(12))
  # The wide image's box is its centred square.
  (wide,) = [j for j in jsonl if j["file"].endswith("wide.png")]
  assert wide["box"] == [8, 0, 40, 32]
  # Columns: 12 AUs (prob, 0/1), the two prompts and their argmax; no FER head in an AU run.
  header = list(table[0])
  assert header[:6] == ["file", "frame", "box_x0", "box_y0", "box_x1", "box_y1"]
  assert "AU12_prob" in header and "AU12" in header and "expression" not in header
  assert header[-3:] == ["prompt: a person smiling", "prompt: a person frowning", "prompt"]
  for t in table:
    p = [float(t["prompt: a person smiling"]), float(t["prompt: a person frowning"])]
    assert abs(sum(p) - 1) < 1e-5
    assert t["AU12"] == str(int(float(t["AU12_prob"]) >= 0.5))
  # Overlays per image (subfolders in the name), one AU plot for the video.
  overlays = sorted(p.name for p in (out / "overlays").iterdir())
  assert overlays == [
    "face0.png",
    "face1.png",
    "face2.png",
    "face3.png",
    "sub__face4.png",
    "sub__face5.png",
    "wide.png",
  ]
  assert Image.open(out / "overlays" / "face0.png").size == (256, 256)
  assert (out / "videos" / "clip_aus.png").is_file()
  # The CLI's numbers are the API's on the same images (the PNGs are lossless).
  _, images = faces
  api = predict.Predictor(f"clef:{runs['au']}")(images[:4])
  got = [
    float(t["AU1_prob"])
    for t in table
    if t["file"].endswith(("face0.png", "face1.png", "face2.png", "face3.png"))
  ]
  np.testing.assert_allclose(got, api.au_prob[:, 0], atol=2e-6)


def test_prompts_are_template_ensembles_of_the_text_tower(exported, faces):
  """prompt_cos = cos(z, mean over the free_text templates of the prompt's text embeddings)."""
  from clef_jax import prompts as prompts_lib  # pylint: disable=g-import-not-at-top

  _, images = faces
  folder = exported["au"]
  ps = ["a person squinting", "a person in pain."]
  p = predict.Predictor(f"hf:{folder}", prompts=ps)(images)
  size = json.loads((folder / "config.json").read_text())["vision_config"]["image_size"]
  model, z = _torch_embed(folder, _model_inputs(images, size))
  templates = prompts_lib.templates("free_text")
  assert len(templates) >= 2
  texts = [[t.format(x.rstrip(".")) for x in ps] for t in templates]
  assert texts[1] == ["a photo of a person squinting.", "a photo of a person in pain."]
  ctx = json.loads((folder / "config.json").read_text())["text_config"]["max_position_embeddings"]
  emb = np.mean([_torch_text(model, folder, row, ctx) for row in texts], axis=0)
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  np.testing.assert_allclose(p.prompt_cos, z @ emb.T, atol=1e-5)
  np.testing.assert_allclose(p.prompt_prob.sum(-1), 1, atol=1e-6)


def test_predict_manifest_and_bad_inputs(runs, inputs, tmp_path):
  m = tmp_path / "manifest.jsonl"
  m.write_bytes(
    b'{"path": "%s"}\n' % str(inputs / "face0.png").encode()
    + b"not json\n"
    + b'{"path": "face1.png"}\n'  # relative to the manifest's folder: missing there
    + b'{"caption": "no path"}\n'
    + b"\xff\xfe\n"
  )
  pred = predict.Predictor(f"clef:{runs['au']}")
  summary = predict.run(pred, str(m), str(tmp_path / "out"), progress=False, detect=False)
  assert summary["faces"] == 1 and summary["files"] == 2
  where = [p.where for p in summary["problems"]]
  assert where[:3] == [f"{m}:2", f"{m}:4", f"{m}:5"]
  assert where[3] == str(tmp_path / "face1.png")
  # No head and no prompts: nothing to predict, said before anything is read.
  plain = predict.Predictor(f"hf:{ROOT}/models/synthface-clip")
  with pytest.raises(ValueError, match="no trained head"):
    predict.run(plain, str(m), str(tmp_path / "out2"))
  with pytest.raises(FileNotFoundError, match="matches no file"):
    predict.list_inputs(str(tmp_path / "*.nothing"))
  with pytest.raises(FileNotFoundError, match="no such file"):
    predict.list_inputs(str(tmp_path / "missing.png"))
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    predict.prompt_texts(["a smile", "  "])


def test_predict_detects_and_aligns_faces_in_full_frames(runs, tmp_path):
  """Full SynthFace video frames (the face somewhere in a 224 x 168 frame) and a blank image:
  each face is found, its box holds the frame's eyes, and the blank image is listed in
  errors.txt ('no face found'), not centre-cropped into a prediction."""
  pytest.importorskip("mtcnn")
  from input_pipeline.synthface import population  # pylint: disable=g-import-not-at-top
  from input_pipeline.synthface import render  # pylint: disable=g-import-not-at-top
  from input_pipeline import align  # pylint: disable=g-import-not-at-top

  d = tmp_path / "frames"
  d.mkdir()
  eyes = {}
  for i, (cx, hang) in enumerate([(0.4, 0.03), (0.6, 0.1)]):
    subj = population.make_subject(0, 2 * i, "F001")
    place = render.frame_placement(112, (cx, hang, 1.0), (120, 120, 120))
    img, pts = render.render_frame(
      subj.identity, np.zeros(len(render.AUS)), 112, render.NO_NUISANCE, place
    )
    Image.fromarray(img).save(d / f"frame{i}.png")
    eyes[f"frame{i}.png"] = align.key_points(pts + 1.0, "bp4d49")[:2]
  Image.fromarray(np.full((168, 224, 3), 128, np.uint8)).save(d / "blank.png")
  pred = predict.Predictor(f"clef:{runs['au']}")
  summary = predict.run(pred, str(d), str(tmp_path / "out"), progress=False)
  assert summary["faces"] == 2 and summary["files"] == 3
  assert [(p.where, p.reason) for p in summary["problems"]] == [
    (str(d / "blank.png"), "no face found by the detector")
  ]
  rows = [
    json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
  ]
  for r in rows:
    x0, y0, x1, y1 = r["box"]
    e = eyes[os.path.basename(r["file"])]
    assert np.all((e[:, 0] > x0) & (e[:, 0] < x1) & (e[:, 1] > y0) & (e[:, 1] < y1)), r["box"]
    assert (x1 - x0) < 200  # the face's box, not the whole frame
  assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == [
    "frame0.png",
    "frame1.png",
  ]
