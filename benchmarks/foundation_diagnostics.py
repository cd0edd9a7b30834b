r"""What a foundation checkpoint knows about the photos it was trained on (SynthFace-Captions).

  python benchmarks/foundation_diagnostics.py --model=models/synthface-clip --data_dir=DATA

Loads the exported transformers CLIP folder with `transformers.CLIPModel` (torch, CPU: an
independent reader of the checkpoint) and embeds N random training photos of the prepared
`manifest/synthface_captions_lm` corpus under DATA, with what was rendered read from the corpus'
`truth.jsonl` (never read by training). It prints:
  * how often a photo's 5 nearest neighbours (cosine, image embeddings) share its rendered
    expression and its identity, each next to its chance rate;
  * in-domain zero-shot expression accuracy from two prompt sets (expression names; the words
    the captions use), next to always answering the majority expression;
  * image -> caption top-1 retrieval among the N photos' own captions;
  * zero-shot expression accuracy on the RAF-like test set of SynthFace under DATA (prepared
    `synthface/raf`, the evaluators' set), as prepared and centre-cropped to 0.8 and 0.7 of the
    side, with its 5-NN expression agreement: the RAF-like faces are framed looser than the
    corpus' aligned crops (RAF-DB's aligned images are used as they come), so a gap between
    the rows is the framing, not the expression.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from input_pipeline.schema import EXPRESSIONS  # noqa: E402  (the label order of every dataset)

WORDS = dict(
  neutral="expressionless",
  happiness="smiling",
  sadness="sad",
  surprise="surprised",
  fear="scared",
  disgust="disgusted",
  anger="angry",
  contempt="smirking",
)


def _str(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _knn_share(sim: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
  sim = sim.copy()
  np.fill_diagonal(sim, -np.inf)
  nn = np.argsort(sim, 1)[:, -k:]
  return float((labels[nn] == labels[:, None]).mean())


def _chance(labels: np.ndarray) -> float:
  """P(a random other photo has the same label)."""
  _, counts = np.unique(labels, return_counts=True)
  n = len(labels)
  return float(np.sum(counts * (counts - 1)) / (n * (n - 1)))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="models/synthface-clip", help="transformers CLIP folder")
  ap.add_argument("--data_dir", default="data")
  ap.add_argument("--n", type=int, default=1200, help="training photos to embed")
  ap.add_argument("--image_size", type=int, default=0, help="default: the model's")
  args = ap.parse_args(argv)

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from clef_jax.models import vit  # pylint: disable=g-import-not-at-top
  from input_pipeline import sources  # pylint: disable=g-import-not-at-top

  model = transformers.CLIPModel.from_pretrained(args.model).eval().float()
  tok = transformers.CLIPTokenizer.from_pretrained(args.model)
  size = args.image_size or model.config.vision_config.image_size
  context = model.config.text_config.max_position_embeddings
  raw = pathlib.Path(args.data_dir) / sources.CAPTIONS_RAW
  truth = {}
  with open(raw / "truth.jsonl", encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      truth[row["path"]] = row
  ds = sources.open_source("manifest", "train", args.data_dir, config=sources.CAPTIONS_CONFIG)
  idx = np.sort(np.random.default_rng(0).choice(len(ds), min(args.n, len(ds)), replace=False))
  images, expr, subj, caps = [], [], [], []
  for i in idx:
    ex = ds[int(i)]
    rel = _str(ex["image/path"]).split(sources.CAPTIONS_RAW + "/")[-1]
    img = Image.fromarray(ex["image"]).resize((size, size), Image.BILINEAR)
    images.append(np.asarray(img))
    expr.append(truth[rel]["expression"])
    subj.append(_str(ex["subject"]))
    caps.append(_str(ex["caption"]))
  expr, subj = np.array(expr), np.array(subj)
  x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255
  mean = torch.tensor(vit.CLIP_MEAN)[None, :, None, None]
  std = torch.tensor(vit.CLIP_STD)[None, :, None, None]

  def unit(out) -> np.ndarray:
    out = getattr(out, "pooler_output", out)  # transformers 5 returns an output object
    return torch.nn.functional.normalize(out, dim=-1).numpy()

  def texts(strings: list[str]) -> np.ndarray:
    t = tok(strings, padding="max_length", max_length=context, truncation=True, return_tensors="pt")
    with torch.no_grad():
      return unit(model.get_text_features(**t))

  with torch.no_grad():
    z = unit(model.get_image_features(pixel_values=(x - mean) / std))
  sim = z @ z.T
  print(f"{args.model}: {len(idx)} training photos of {raw}, {size} px")
  print(
    f"5-NN share the rendered expression: {_knn_share(sim, expr):.3f} (chance {_chance(expr):.3f})"
  )
  print(
    f"5-NN share the identity:            {_knn_share(sim, subj):.3f} (chance {_chance(subj):.3f})"
  )
  majority = max(float((expr == e).mean()) for e in EXPRESSIONS)
  for name, prompts in (
    ("names", [f"a photo of a face showing {e}" for e in EXPRESSIONS]),
    ("caption words", [f"a photo of a {WORDS[e]} person" for e in EXPRESSIONS]),
  ):
    pred = np.array(EXPRESSIONS)[(z @ texts(prompts).T).argmax(1)]
    print(
      f"zero-shot expression ({name}): {float((pred == expr).mean()):.3f} (majority {majority:.3f})"
    )
  top1 = float(((z @ texts(caps).T).argmax(1) == np.arange(len(caps))).mean())
  print(f"image -> caption top-1 among {len(caps)}: {top1:.3f} (chance {1 / len(caps):.4f})")

  # The RAF-like test set (7 classes), as the zero-shot evaluator sees it and centre-cropped.
  try:
    raf = sources.open_source("synthface", "test", args.data_dir, config="raf")
  except Exception as e:  # pylint: disable=broad-except
    print(f"RAF-like test set: not prepared under {args.data_dir} ({type(e).__name__}); skipped")
    return 0
  faces = [raf[i] for i in range(len(raf))]
  label = np.array([EXPRESSIONS[int(ex["expression"])] for ex in faces])
  present = [e for e in EXPRESSIONS if e in set(label)]
  chance = max(float((label == e).mean()) for e in present)
  for crop in (1.0, 0.8, 0.7):
    side = faces[0]["image"].shape[0]
    o = side * (1 - crop) / 2
    x = np.stack(
      [
        np.asarray(
          Image.fromarray(ex["image"]).resize(
            (size, size), Image.BILINEAR, box=(o, o, side - o, side - o)
          )
        )
        for ex in faces
      ]
    )
    x = torch.tensor(x).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
      zr = unit(model.get_image_features(pixel_values=(x - mean) / std))
    nn = np.argsort(-(zr @ zr.T - 9 * np.eye(len(zr))), 1)[:, :5]
    accs = []
    for prompts in (
      [f"a photo of a face showing {e}" for e in present],
      [f"a photo of a {WORDS[e]} person" for e in present],
    ):
      pred = np.array(present)[(zr @ texts(prompts).T).argmax(1)]
      accs.append(float((pred == label).mean()))
    print(
      f"RAF-like test ({len(faces)} faces, {len(present)} classes), centre crop {crop:.1f}: "
      f"zero-shot names {accs[0]:.3f}, caption words {accs[1]:.3f} (chance {1 / len(present):.3f}, "
      f"majority {chance:.3f}); 5-NN share the expression {float((label[nn] == label[:, None]).mean()):.3f}"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
