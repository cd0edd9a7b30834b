"""FER readers (RAF-DB, FER+, AffectNet) and the manifest reader, on fixtures in the real layouts.

Expected labels are written out by hand from DATASETS.md. Canonical order:
neutral 0, happiness 1, sadness 2, surprise 3, fear 4, disgust 5, anger 6, contempt 7.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image
import pytest

from input_pipeline import readers
from input_pipeline.readers import affectnet
from input_pipeline.readers import common
from input_pipeline.readers import ferplus
from input_pipeline.readers import manifest
from input_pipeline.readers import raf_db

NEUTRAL, HAPPINESS, SADNESS, SURPRISE, FEAR, DISGUST, ANGER, CONTEMPT = range(8)


def _color(n: int) -> tuple[int, int, int]:
  return (n * 37 + 10) % 256, (n * 91 + 50) % 256, (200 - n * 23) % 256


def _write_image(path: pathlib.Path, n: int, size: tuple[int, int] = (10, 10)) -> None:
  """A flat colour image (h, w) = size; PNG content whatever the suffix (PIL reads content)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  arr = np.zeros(size + (3,), np.uint8)
  arr[:] = _color(n)
  Image.fromarray(arr).save(path, format="PNG")


def _color_of(image: np.ndarray) -> tuple[int, ...]:
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  return tuple(int(v) for v in image.reshape(-1, 3)[0])


def test_registry_is_lazy_and_complete():
  assert sorted(readers.READERS) == sorted(
    ["bp4d", "bp4d_plus", "disfa", "raf_db", "ferplus", "affectnet", "manifest", "synthface"]
  )
  assert readers.get("raf_db") is raf_db
  with pytest.raises(KeyError, match="unknown dataset 'rafdb'"):
    readers.get("rafdb")


def test_class_mappings_to_canonical_order():
  # RAF-DB labels 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral.
  assert raf_db.TO_CANONICAL == (SURPRISE, FEAR, DISGUST, HAPPINESS, SADNESS, ANGER, NEUTRAL)
  # FER+ columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt.
  assert ferplus.TO_CANONICAL == (
    NEUTRAL,
    HAPPINESS,
    SURPRISE,
    SADNESS,
    ANGER,
    DISGUST,
    FEAR,
    CONTEMPT,
  )
  # AffectNet codes 0..7 = neutral, happy, sad, surprise, fear, disgust, anger, contempt.
  assert affectnet.TO_CANONICAL == tuple(range(8))


# ----------------------------------------------------------------------------------------------
# RAF-DB
# ----------------------------------------------------------------------------------------------


def _write_raf(
  root: pathlib.Path, lines: list[str], images: dict[str, int], corrupt: tuple[str, ...] = ()
) -> pathlib.Path:
  label = root / "basic" / "EmoLabel" / "list_patition_label.txt"
  label.parent.mkdir(parents=True)
  label.write_bytes(("\r\n".join(lines) + "\r\n").encode())  # CRLF, as shipped
  for name, n in images.items():
    stem = name.rsplit(".", 1)[0]
    _write_image(root / "basic" / "Image" / "aligned" / f"{stem}_aligned.jpg", n)
    _write_image(root / "basic" / "Image" / "original" / name, n + 100, size=(12, 16))
  for name in corrupt:
    stem = name.rsplit(".", 1)[0]
    (root / "basic" / "Image" / "aligned" / f"{stem}_aligned.jpg").write_bytes(b"\xff\xd8 no jpeg")
  return root


@pytest.fixture
def raf_root(tmp_path):
  lines = [
    "train_00001.jpg 5",
    "train_00002.jpg 1",
    "train_00003.jpg 7",
    "test_0001.jpg 4",
    "test_0002.jpg 2",
    "train_00004.jpg 6",
  ]
  images = {"train_00001.jpg": 1, "train_00002.jpg": 2, "test_0001.jpg": 4, "train_00004.jpg": 6}
  # train_00003 has no image; test_0002 is not an image.
  return _write_raf(tmp_path / "RAF-DB", lines, images, corrupt=("test_0002.jpg",))


def test_raf_train_labels_images_and_skips(raf_root):
  skips = common.Skips()
  got = list(raf_db.read(raf_root, split="train", skips=skips))
  assert [pathlib.Path(e["image/path"]).name for e in got] == [
    "train_00001_aligned.jpg",
    "train_00002_aligned.jpg",
    "train_00004_aligned.jpg",
  ]
  assert [e["expression"] for e in got] == [SADNESS, SURPRISE, ANGER]  # labels 5, 1, 6
  assert [_color_of(e["image"]) for e in got] == [_color(1), _color(2), _color(6)]
  assert all(e["frame"] == -1 and e["fold"] == 0 and e["subject"] == "" for e in got)
  assert all(e["au"].shape == (0,) and not e["expression/votes"].any() for e in got)
  assert dict(skips.counts) == {"image file missing": 1}


def test_raf_test_split_and_corrupt_image(raf_root):
  skips = common.Skips()
  got = list(raf_db.read(raf_root, split="test", skips=skips))
  assert [e["expression"] for e in got] == [HAPPINESS]  # test_0001 label 4
  assert dict(skips.counts) == {"unreadable or non-image file": 1}


def test_raf_original_variant_and_basic_as_root(raf_root):
  got = list(raf_db.read(raf_root / "basic", split="train", variant="original"))
  assert [pathlib.Path(e["image/path"]).name for e in got] == [
    "train_00001.jpg",
    "train_00002.jpg",
    "train_00004.jpg",
  ]  # train_00003 missing
  assert got[0]["image"].shape == (12, 16, 3)
  assert _color_of(got[0]["image"]) == _color(101)


@pytest.mark.parametrize(
  "line,message",
  [
    ("val_00001.jpg 3", "neither train_<5 digits> nor test_<4 digits>"),
    ("train_0001.jpg 3", "neither train_<5 digits> nor test_<4 digits>"),  # 4-digit train
    ("test_00001.jpg 3", "neither train_<5 digits> nor test_<4 digits>"),  # 5-digit test
    ("train_00009.jpg 8", "label 8 out of range 1..7"),
    ("train_00009.jpg 0", "label 0 out of range 1..7"),
    ("train_00009.jpg x", "label: expected an integer"),
  ],
)
def test_raf_structural_errors_name_path_and_line(tmp_path, line, message):
  root = _write_raf(
    tmp_path / "r", ["train_00001.jpg 1", "test_0001.jpg 2", line], {"train_00001.jpg": 1}
  )
  path = root / "basic" / "EmoLabel" / "list_patition_label.txt"
  with pytest.raises(common.DatasetError, match=f"{path}:3: .*{message}"):
    list(raf_db.read(root, split="train"))


def test_raf_missing_label_file(tmp_path):
  with pytest.raises(common.DatasetError, match="list_patition_label.txt: RAF-DB label file"):
    list(raf_db.read(tmp_path))


# ----------------------------------------------------------------------------------------------
# FER+
# ----------------------------------------------------------------------------------------------

# (Usage, image name, counts: neutral, happiness, surprise, sadness, anger, disgust, fear,
# contempt, unknown, NF)
FERPLUS_ROWS = [
  ("Training", "fer0000000.png", [6, 4, 0, 0, 0, 0, 0, 0, 0, 0]),  # 6/10 > 50%: neutral
  ("Training", "fer0000001.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),  # tie 5/5: no majority
  ("Training", "fer0000002.png", [5, 3, 1, 1, 0, 0, 0, 0, 0, 0]),  # 1s zeroed: 5/8: neutral
  ("Training", "fer0000003.png", [5, 3, 2, 0, 0, 0, 0, 0, 0, 0]),  # 5/10 not > 50%
  ("Training", "", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),  # empty image name
  ("Training", "fer0000005.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),  # NF wins
  ("Training", "fer0000006.png", [0, 3, 0, 0, 0, 0, 0, 0, 7, 0]),  # unknown wins
  ("PublicTest", "fer0000007.png", [0, 0, 7, 0, 3, 0, 0, 0, 0, 0]),  # surprise 7/10
  ("PrivateTest", "fer0000008.png", [0, 0, 0, 0, 0, 0, 4, 6, 0, 0]),  # contempt 6/10
  ("Training", "fer0000009.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),  # all single votes
  ("Training", "fer0000010.png", [4, 3, 3, 0, 0, 0, 0, 0, 0, 0]),  # 4/10: no majority
  ("PrivateTest", "fer0000011.png", [3, 3, 0, 0, 0, 0, 0, 0, 0, 0]),  # tie in test
]
FER_HEADER = (
  "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
)


def _pixels(n: int) -> np.ndarray:
  return ((np.arange(48 * 48) + 7 * n) % 256).astype(np.uint8).reshape(48, 48)


def _write_ferplus_csv(root: pathlib.Path, rows=FERPLUS_ROWS, bad_pixels_row: int | None = None):
  root.mkdir(parents=True, exist_ok=True)
  fer = ["emotion,pixels,Usage"]
  new = [FER_HEADER]
  for i, (usage, name, counts) in enumerate(rows):
    px = _pixels(i).reshape(-1).tolist()
    if i == bad_pixels_row:
      px = px[:-1]
    fer.append(f"0,{' '.join(map(str, px))},{usage}")
    new.append(",".join([usage, name] + [str(c) for c in counts]))
  (root / "fer2013.csv").write_text("\n".join(fer) + "\n")
  (root / "fer2013new.csv").write_text("\n".join(new) + "\n")
  return root


def _votes(**by_name: float) -> np.ndarray:
  names = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]
  return np.asarray([by_name.get(n, 0.0) for n in names], np.float32)


def test_ferplus_majority_protocol_train(tmp_path):
  root = _write_ferplus_csv(tmp_path / "fer")
  skips = common.Skips()
  got = list(ferplus.read(root, split="train", skips=skips))
  # Rows 0 and 2 (file lines 2 and 4) survive, both neutral.
  # The pixels' CSV line and the FER+ image name of the row (rows 0 and 2).
  assert [e["image/path"] for e in got] == [
    f"{root / 'fer2013.csv'}:2/fer0000000.png",
    f"{root / 'fer2013.csv'}:4/fer0000002.png",
  ]
  assert [pathlib.Path(e["image/path"]).name for e in got] == ["fer0000000.png", "fer0000002.png"]
  assert [e["expression"] for e in got] == [NEUTRAL, NEUTRAL]
  np.testing.assert_allclose(got[0]["expression/votes"], _votes(neutral=0.6, happiness=0.4))
  np.testing.assert_allclose(got[1]["expression/votes"], _votes(neutral=5 / 8, happiness=3 / 8))
  np.testing.assert_array_equal(got[0]["image"][..., 0], _pixels(0))
  np.testing.assert_array_equal(got[1]["image"][..., 2], _pixels(2))
  assert dict(skips.counts) == {
    ferplus.SKIP_NO_MAJORITY: 4,  # tie 5/5, 5/10, all single votes, 4/10
    ferplus.SKIP_EMPTY_NAME: 1,
    ferplus.SKIP_NF: 1,
    ferplus.SKIP_UNKNOWN: 1,
  }


def test_ferplus_validation_and_test_use_majority(tmp_path):
  root = _write_ferplus_csv(tmp_path / "fer")
  val = list(ferplus.read(root, split="validation", label_mode="votes"))
  assert [e["expression"] for e in val] == [SURPRISE]
  np.testing.assert_allclose(val[0]["expression/votes"], _votes(surprise=0.7, anger=0.3))
  skips = common.Skips()
  test = list(ferplus.read(root, split="test", label_mode="votes", skips=skips))
  assert [e["expression"] for e in test] == [CONTEMPT]
  np.testing.assert_allclose(test[0]["expression/votes"], _votes(contempt=0.6, fear=0.4))
  assert dict(skips.counts) == {ferplus.SKIP_NO_MAJORITY: 1}  # the 3/3 tie


def test_ferplus_votes_mode_train(tmp_path):
  root = _write_ferplus_csv(tmp_path / "fer")
  skips = common.Skips()
  got = list(ferplus.read(root, split="train", label_mode="votes", skips=skips))
  # Kept: rows 0, 1 (tie -> first column, neutral), 2, 3, 10; plurality emotion as label.
  lines = [int(e["image/path"].rsplit(":", 1)[1].split("/")[0]) for e in got]
  assert lines == [2, 3, 4, 5, 12]
  assert [e["expression"] for e in got] == [NEUTRAL] * 5
  np.testing.assert_allclose(got[1]["expression/votes"], _votes(neutral=0.5, happiness=0.5))
  np.testing.assert_allclose(
    got[3]["expression/votes"], _votes(neutral=0.5, happiness=0.3, surprise=0.2)
  )
  np.testing.assert_allclose(
    got[4]["expression/votes"], _votes(neutral=0.4, happiness=0.3, surprise=0.3)
  )
  assert dict(skips.counts) == {
    ferplus.SKIP_EMPTY_NAME: 1,
    ferplus.SKIP_PLURALITY_NF: 1,
    ferplus.SKIP_PLURALITY_UNKNOWN: 1,
    ferplus.SKIP_NO_VOTES: 1,
  }


def test_ferplus_majority_label_function_edge_cases():
  assert ferplus.majority_label([6, 4, 0, 0, 0, 0, 0, 0, 0, 0]) == 0
  assert ferplus.majority_label([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]) == -1
  assert ferplus.majority_label([5, 3, 2, 0, 0, 0, 0, 0, 0, 0]) == -1
  assert ferplus.majority_label([5, 3, 1, 1, 0, 0, 0, 0, 0, 0]) == 0
  assert ferplus.majority_label([0, 2, 1, 1, 1, 1, 1, 1, 1, 1]) == 1  # 2 of the 2 kept votes
  assert ferplus.majority_label([1] * 10) == -1
  assert ferplus.majority_label([0, 0, 0, 0, 0, 0, 0, 0, 2, 8]) == 9


def test_ferplus_wrong_pixel_count(tmp_path):
  root = _write_ferplus_csv(tmp_path / "fer", bad_pixels_row=2)
  with pytest.raises(
    common.DatasetError, match=f"{root / 'fer2013.csv'}:4: pixels: expected 2304 values.*got 2303"
  ):
    list(ferplus.read(root, split="train"))


def test_ferplus_misaligned_files(tmp_path):
  root = _write_ferplus_csv(tmp_path / "fer")
  lines = (root / "fer2013.csv").read_text().splitlines()
  (root / "fer2013.csv").write_text("\n".join(lines[:-1]) + "\n")
  with pytest.raises(common.DatasetError, match="fer2013new.csv:13: has more rows than"):
    list(ferplus.read(root))


def test_ferplus_converter_folder_layout(tmp_path):
  root = tmp_path / "FERPlus"
  rows = {
    "FER2013Train": [
      ("fer0000000.png", [6, 4, 0, 0, 0, 0, 0, 0, 0, 0]),
      ("", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
      ("fer0000002.png", [0, 0, 0, 8, 2, 0, 0, 0, 0, 0]),
    ],
    "FER2013Valid": [("fer0028638.png", [0, 0, 0, 0, 0, 9, 1, 0, 0, 0])],
    "FER2013Test": [("fer0032220.png", [0, 2, 0, 0, 0, 0, 0, 0, 0, 8])],
  }
  n = 0
  for folder, items in rows.items():
    (root / folder).mkdir(parents=True)
    lines = []
    for name, counts in items:
      lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, counts)))
      if name:
        Image.fromarray(_pixels(n)).save(root / folder / name)
        n += 1
    (root / folder / "label.csv").write_text("\n".join(lines) + "\n")
  skips = common.Skips()
  train = list(ferplus.read(root, split="train", skips=skips))
  assert [pathlib.Path(e["image/path"]).name for e in train] == ["fer0000000.png", "fer0000002.png"]
  assert [e["expression"] for e in train] == [NEUTRAL, SADNESS]  # column 3 = sadness
  np.testing.assert_array_equal(train[1]["image"][..., 1], _pixels(1))
  assert dict(skips.counts) == {ferplus.SKIP_EMPTY_NAME: 1}
  assert [e["expression"] for e in ferplus.read(root, split="validation")] == [DISGUST]
  skips = common.Skips()
  assert list(ferplus.read(root, split="test", skips=skips)) == []
  assert dict(skips.counts) == {ferplus.SKIP_NF: 1}
  (root / "FER2013Test" / "label.csv").write_text("fer0032220.png,0,1,2\n")
  with pytest.raises(common.DatasetError, match=r"FER2013Test/label.csv:1: expected 12 fields"):
    list(ferplus.read(root, split="test"))


def test_ferplus_no_data(tmp_path):
  with pytest.raises(common.DatasetError, match="no FER\\+ data"):
    list(ferplus.read(tmp_path))


# ----------------------------------------------------------------------------------------------
# AffectNet
# ----------------------------------------------------------------------------------------------

AFFECT_HEADER = (
  "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
  "expression,valence,arousal"
)


def _gradient(h: int, w: int) -> np.ndarray:
  y, x = np.mgrid[:h, :w]
  return np.stack([x * 7 % 256, y * 11 % 256, (x + y) % 256], -1).astype(np.uint8)


def _write_affectnet_csv(root: pathlib.Path, codes: dict[str, list[int]]) -> pathlib.Path:
  lists = root / "Manually_Annotated_file_lists"
  lists.mkdir(parents=True)
  for split_file, split_codes in codes.items():
    lines = [AFFECT_HEADER]
    for i, code in enumerate(split_codes):
      rel = f"{split_file[:3]}{i}/img{i}.jpg"
      path = root / "Manually_Annotated_Images" / rel
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(_gradient(20, 30)).save(path, format="PNG")
      lines.append(f'{rel},2,3,10,12,"1.0;2.0;3.0;4.0",{code},0.5,-0.2')
    (lists / split_file).write_text("\n".join(lines) + "\n")
  return root


def test_affectnet_csv_codes_8_class(tmp_path):
  root = _write_affectnet_csv(
    tmp_path / "AffectNet",
    {"training.csv": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 7], "validation.csv": [6, 10]},
  )
  skips = common.Skips()
  got = list(affectnet.read(root, split="train", skips=skips))
  assert [e["expression"] for e in got] == [
    NEUTRAL,
    HAPPINESS,
    SADNESS,
    SURPRISE,
    FEAR,
    DISGUST,
    ANGER,
    CONTEMPT,
    CONTEMPT,
  ]
  assert dict(skips.counts) == {
    "code 8 (none)": 1,
    "code 9 (uncertain)": 1,
    "code 10 (non-face)": 1,
  }
  assert got[0]["image"].shape == (20, 30, 3)  # no crop by default
  assert [e["expression"] for e in affectnet.read(root, split="test")] == [ANGER]
  assert [e["expression"] for e in affectnet.read(root, split="validation")] == [ANGER]


def test_affectnet_7_class_and_crop(tmp_path):
  root = _write_affectnet_csv(
    tmp_path / "AffectNet", {"training.csv": [7, 3, 7, 8], "validation.csv": [0]}
  )
  skips = common.Skips()
  got = list(affectnet.read(root, split="train", num_classes=7, crop=True, skips=skips))
  assert [e["expression"] for e in got] == [SURPRISE]
  assert dict(skips.counts) == {affectnet.SKIP_CONTEMPT: 2, "code 8 (none)": 1}
  # Box x=2, y=3, w=10, h=12 of the 20x30 gradient.
  np.testing.assert_array_equal(got[0]["image"], _gradient(20, 30)[3:15, 2:12])


def test_affectnet_bad_code_and_missing_column(tmp_path):
  root = _write_affectnet_csv(tmp_path / "a", {"training.csv": [1, 11]})
  path = root / "Manually_Annotated_file_lists" / "training.csv"
  with pytest.raises(common.DatasetError, match=f"{path}:3: expression code 11 out of range"):
    list(affectnet.read(root, split="train"))
  path.write_text("subDirectory_filePath,valence\nx.jpg,0.1\n")
  with pytest.raises(
    common.DatasetError,
    match=r"training.csv:1: header lacks column\(s\) "
    r"\['expression'\]",
  ):
    list(affectnet.read(root, split="train"))


def test_affectnet_npy_layout(tmp_path):
  root = tmp_path / "AffectNet"
  train = {"0": "1", "1": "7", "2": "9", "10": "3"}  # 10 after 2: numeric order
  (root / "train_set" / "annotations").mkdir(parents=True)
  for stem, code in train.items():
    _write_image(root / "train_set" / "images" / f"{stem}.jpg", int(stem))
    np.save(root / "train_set" / "annotations" / f"{stem}_exp.npy", np.array(code))
    np.save(root / "train_set" / "annotations" / f"{stem}_val.npy", np.array("0.1"))
  np.save(root / "train_set" / "annotations" / "3_exp.npy", np.array("2"))  # no image
  _write_image(root / "val_set" / "images" / "5.jpg", 5)
  (root / "val_set" / "annotations").mkdir(parents=True)
  np.save(root / "val_set" / "annotations" / "5_exp.npy", np.array("5"))
  skips = common.Skips()
  got = list(affectnet.read(root, split="train", num_classes=7, skips=skips))
  assert [pathlib.Path(e["image/path"]).name for e in got] == ["0.jpg", "10.jpg"]
  assert [e["expression"] for e in got] == [HAPPINESS, SURPRISE]
  assert [_color_of(e["image"]) for e in got] == [_color(0), _color(10)]
  assert dict(skips.counts) == {
    affectnet.SKIP_CONTEMPT: 1,
    "code 9 (uncertain)": 1,
    "annotation without an image": 1,
  }
  assert [e["expression"] for e in affectnet.read(root, split="test")] == [DISGUST]
  np.save(root / "val_set" / "annotations" / "5_exp.npy", np.array("12"))
  with pytest.raises(common.DatasetError, match="5_exp.npy: expression code 12 out of range"):
    list(affectnet.read(root, split="test"))


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------


def _manifest_images(root: pathlib.Path) -> None:
  for i in range(3):
    _write_image(root / "img" / f"{i}.png", 40 + i)


def test_manifest_csv(tmp_path):
  root = tmp_path / "lab"
  _manifest_images(root)
  abs_path = root / "img" / "2.png"
  (root / "manifest.csv").write_text(
    "path,subject,task,activity_text,frame,au_12,au_2,expression,fold\n"
    "img/0.png,S1,T1,Tell a joke.,5,1,0,happiness,1\n"
    "img/1.png,S2,,,,,-1,3,2\n"
    f"{abs_path},S2,T2,,7,0,1,,2\n"
    "img/missing.png,S3,,,,1,1,,1\n"
  )
  assert manifest.aus(root) == [2, 12]
  skips = common.Skips()
  got = list(manifest.read(root, skips=skips))
  assert [e["subject"] for e in got] == ["S1", "S2", "S2"]
  assert [e["au"].tolist() for e in got] == [[0, 1], [-1, -1], [1, 0]]  # order AU2, AU12
  assert [e["au"].dtype for e in got] == [np.int8] * 3
  assert [e["expression"] for e in got] == [HAPPINESS, SURPRISE, -1]
  assert [e["frame"] for e in got] == [5, -1, 7]
  assert [e["fold"] for e in got] == [1, 2, 2]
  assert got[0]["task"] == "T1" and got[0]["activity_text"] == "Tell a joke."
  assert [_color_of(e["image"]) for e in got] == [_color(40), _color(41), _color(42)]
  assert got[2]["image/path"] == str(abs_path)
  assert dict(skips.counts) == {"image file missing": 1}
  assert manifest.folds(root) == [1, 2]


def test_manifest_jsonl_and_split(tmp_path):
  root = tmp_path / "lab"
  _manifest_images(root)
  rows = [
    {"path": "img/0.png", "au_4": 1, "expression": "anger", "split": "train"},
    {"path": "img/1.png", "au_1": 0, "au_4": None, "expression": 7, "split": "test"},
    {"path": "img/2.png", "label": "fear"},
  ]
  (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  assert manifest.aus(root) == [1, 4]
  train = list(manifest.read(root, split="train"))
  assert [e["au"].tolist() for e in train] == [[-1, 1], [-1, -1]]
  assert [e["expression"] for e in train] == [ANGER, FEAR]
  test = list(manifest.read(root / "manifest.jsonl", split="test"))
  assert [(e["au"].tolist(), e["expression"]) for e in test] == [([0, -1], CONTEMPT)]
  assert manifest.splits(root) == ["train", "test"]


@pytest.mark.parametrize(
  "row,message",
  [
    ("img/0.png,2,happiness,0", "au_12: expected 1, 0, -1 or empty, got '2'"),
    ("img/0.png,1,joy,0", "expression: 'joy' is neither a name"),
    ("img/0.png,1,8,0", "expression: '8' is neither a name"),
    ("img/0.png,1,neutral,x", "fold: expected an integer"),
    (",1,neutral,0", "path is empty"),
  ],
)
def test_manifest_bad_values(tmp_path, row, message):
  root = tmp_path / "lab"
  _manifest_images(root)
  (root / "manifest.csv").write_text(f"path,au_12,expression,fold\nimg/1.png,0,neutral,1\n{row}\n")
  with pytest.raises(common.DatasetError, match=f"manifest.csv:3: {message}"):
    list(manifest.read(root))


def test_manifest_bad_jsonl_line(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"path": "a.png"}\n{"path": \n')
  with pytest.raises(common.DatasetError, match=f"{path}:2: invalid JSON"):
    list(manifest.read(path))
