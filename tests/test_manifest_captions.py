"""Image–text manifests (web alt-text, as in LAION-Face): captions through reader, TFDS and sources.

The manifests are written here byte by byte (a BOM, CRLF, a Latin-1 line, a quoted two-line
caption), so every expected caption, line number and count below is read off the file by hand.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from input_pipeline import builders
from input_pipeline import sources
from input_pipeline.readers import common
from input_pipeline.readers import manifest

SIZE = 16
CONFIG = f"default_{SIZE}px"
BOM = b"\xef\xbb\xbf"
MISSING = "image file missing"
NON_UTF8 = "non-UTF-8 line"
NO_PART = "subject in no part of the fold split"


def _images(root: pathlib.Path) -> None:
  (root / "img").mkdir(parents=True)
  for i, ext in enumerate(("png", "jpg", "png", "jpg")):
    Image.fromarray(np.full((20, 24, 3), 30 + 50 * i, np.uint8)).save(root / "img" / f"{i}.{ext}")


# Line numbers are those of the file (the quoted caption spans lines 3-4; the row is line 4).
CSV = (
  BOM
  + b"path,subject,caption,expression,split\r\n"  # 1
  + b'img/0.png,S1," Smiling, at the beach ",happiness,train\r\n'  # 2
  + b'img/1.jpg,S2,"two-line\r\n'  # 3
  + b'caption",,train\r\n'  # 4
  + b"img/missing.png,S3,lost,,train\r\n"  # 5: image missing
  + b"img/2.png,S1,,neutral,test\r\n"  # 6: empty caption, kept
  + b"img/3.jpg,S2,na\xefve,,test\r\n"  # 7: Latin-1, not UTF-8
  + "img/3.jpg,S2,Ünïcödé 😀,,test\r\n".encode()  # 8
)
CSV_CAPTIONS = ["Smiling, at the beach", "two-line\r\ncaption", "", "Ünïcödé 😀"]

JSONL = (
  BOM
  + b'{"path": "img/0.png", "caption": "  A smiling woman ", "fold": 1, "au_12": 1}\n'  # 1
  + b'{"path": "img/1.jpg", "text": "man with glasses #photo", "fold": 2, "au_12": 0}\n'  # 2
  + b'{"path": "img/missing.png", "caption": "never seen", "fold": 1}\n'  # 3: image missing
  + b'{"path": "img/2.png", "caption": "   ", "fold": 2, "au_12": 1}\n'  # 4: empty, kept
  + b'{"path": "img/3.jpg", "caption": "caf\xe9 owner", "fold": 3}\n'  # 5: Latin-1
  + '{"path": "img/3.jpg", "caption": "Ünïcödé — ok 😀", "fold": 3}\n'.encode()  # 6
  + b'{"path": "img/0.png", "fold": 0}\n'  # 7: no caption key, in no part
)
JSONL_CAPTIONS = ["A smiling woman", "man with glasses #photo", "", "Ünïcödé — ok 😀", ""]


def _write(tmp: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
  root = tmp / name.split(".")[0]
  _images(root)
  (root / name).write_bytes(data)
  return root


def _warnings(caplog, text: str) -> list[str]:
  return [
    r.getMessage()
    for r in caplog.records
    if r.levelno == logging.WARNING and text in r.getMessage()
  ]


def _str(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@pytest.mark.parametrize(
  "name,data,captions,bad,missing,empty_lines",
  [
    ("manifest.csv", CSV, CSV_CAPTIONS, 7, 5, [6]),
    ("manifest.jsonl", JSONL, JSONL_CAPTIONS, 5, 3, [4, 7]),
  ],
)
def test_read_yields_captions_and_reports_each_bad_line(
  tmp_path, caplog, name, data, captions, bad, missing, empty_lines
):
  root = _write(tmp_path, name, data)
  path = str(root / name)
  assert manifest.has_captions(root)
  skips, stats = common.Skips(), common.CaptionStats()
  with caplog.at_level(logging.WARNING):
    got = list(manifest.read(root, skips=skips, captions=stats))
  assert [e["caption"] for e in got] == captions
  assert all(set(e) == set(common.FIELDS) for e in got)
  assert dict(skips.counts) == {MISSING: 1, NON_UTF8: 1}
  assert skips.examples[NON_UTF8] == [f"{path}:{bad}"]
  assert skips.examples[MISSING] == [f"{path}:{missing}: {root / 'img' / 'missing.png'}"]
  assert stats.as_dict() == {
    "captions": len(captions) - len(empty_lines),
    "empty": len(empty_lines),
    "empty_lines": empty_lines,
  }
  (utf8,) = _warnings(caplog, "not UTF-8")
  assert utf8.startswith(path) and f"line {bad}" in utf8
  (empty,) = _warnings(caplog, "empty caption")
  lines = ", ".join(map(str, empty_lines))
  assert empty.startswith(f"{path}: {len(empty_lines)} row(s)") and f"line {lines})" in empty


def test_split_filter_and_a_manifest_without_captions(tmp_path, caplog):
  root = _write(tmp_path, "manifest.csv", CSV)
  assert [e["caption"] for e in manifest.read(root, split="test")] == ["", "Ünïcödé 😀"]
  plain = _write(tmp_path / "plain", "manifest.csv", b"path,subject\nimg/0.png,S1\nimg/1.jpg,S2\n")
  stats = common.CaptionStats()
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    got = list(manifest.read(plain, captions=stats))
  assert [e["caption"] for e in got] == ["", ""] and not manifest.has_captions(plain)
  assert stats.as_dict() == {"captions": 0, "empty": 0, "empty_lines": []}
  assert not _warnings(caplog, "caption")


@pytest.mark.parametrize(
  "data,message",
  [
    (
      b"path,caption,text\nimg/0.png,a,b\n",
      r"manifest.csv:2: caption given twice \('caption' and 'text'\)",
    ),
    (b"path,ca\xefption\nimg/0.png,a\n", r"manifest.csv:1: header row is not UTF-8"),
    (
      b"\xff\xfep\x00a\x00t\x00h\x00\n\x00",
      r"manifest.csv:1: file is UTF-16 text; save it as UTF-8",
    ),
    (b"path\n", r"manifest.csv: manifest has no rows$"),
    (b"path\n\xe9.png\n", r"manifest.csv: manifest has no rows \(1 line\(s\) not UTF-8: 2\)"),
  ],
)
def test_bad_manifests_name_path_and_line(tmp_path, data, message):
  root = _write(tmp_path, "manifest.csv", data)
  with pytest.raises(common.DatasetError, match=message):
    list(manifest.read(root))


def test_other_csv_readers_get_a_dataset_error_not_a_unicode_traceback(tmp_path):
  path = tmp_path / "labels.csv"
  path.write_bytes(BOM + b"a,b\n1,2\n3,\xe94\n5,6\n")
  with pytest.raises(common.DatasetError, match=rf"{path}:3: not UTF-8 text \(byte 0xe9"):
    list(common.read_csv(path))
  bad: list[int] = []
  assert list(common.read_csv(path, bad_lines=bad)) == [
    (2, {"a": "1", "b": "2"}),
    (4, {"a": "5", "b": "6"}),
  ]
  assert bad == [3]
  # A BOM, CR-only and CRLF line ends: the same rows and line numbers as "\n".
  path.write_bytes(BOM + b"a,b\r1,2\r\n\r\n3,4")
  assert list(common.read_csv(path, header=False)) == [
    (1, ["a", "b"]),
    (2, ["1", "2"]),
    (4, ["3", "4"]),
  ]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """{file name: (manifest folder, data_dir, caplog-like warning messages)} prepared at 16 px."""
  out = {}
  for name, data in (("manifest.csv", CSV), ("manifest.jsonl", JSONL)):
    tmp = tmp_path_factory.mktemp(name.replace(".", "_"))
    root = _write(tmp, name, data)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
      sources.prepare("manifest", root, tmp / "tfds", image_size=SIZE)
    finally:
      logging.getLogger().removeHandler(handler)
    out[name] = (root, tmp / "tfds", [r.getMessage() for r in records])
  return out


def test_prepared_csv_stores_captions_and_data_quality_counts(prepared):
  root, data_dir, warnings = prepared["manifest.csv"]
  meta = sources.info("manifest", data_dir, CONFIG)
  assert meta["num_examples"] == {"train": 2, "test": 2}
  assert meta["caption_stats"] == {"captions": 3, "empty": 1, "empty_lines": [6]}
  # Two splits, one pass: each bad line counted (and warned about) once.
  assert meta["skips"] == {MISSING: 1, NON_UTF8: 1}
  assert len([w for w in warnings if "empty caption" in w]) == 1
  assert len([w for w in warnings if "not UTF-8" in w]) == 1
  got = {
    split: [_str(ex["caption"]) for ex in sources.open_source("manifest", split, data_dir, CONFIG)]
    for split in ("train", "test")
  }
  assert got == {"train": CSV_CAPTIONS[:2], "test": CSV_CAPTIONS[2:]}
  test = sources.open_source("manifest", "test", data_dir, CONFIG)
  assert [_str(test[i]["image/path"]) for i in range(2)] == [
    str(root / "img" / "2.png"),
    str(root / "img" / "3.jpg"),
  ]
  # The stored face is the flat colour of its source image, up to JPEG error.
  assert np.abs(test[0]["image"].astype(int) - (30 + 50 * 2)).max() <= 6


def test_prepared_jsonl_with_folds_counts_only_stored_examples(prepared):
  _, data_dir, _ = prepared["manifest.jsonl"]
  meta = sources.info("manifest", data_dir, CONFIG)
  assert meta["num_examples"] == {"part1": 1, "part2": 2, "part3": 1}
  assert meta["aus"] == [12]
  # Line 7 (fold 0) is in no part: skipped, so its empty caption is not a stored one.
  assert meta["caption_stats"] == {"captions": 3, "empty": 1, "empty_lines": [4]}
  assert meta["skips"] == {MISSING: 1, NON_UTF8: 1, NO_PART: 1}
  part2 = sources.open_source("manifest", "part2", data_dir, CONFIG)
  assert [_str(part2[i]["caption"]) for i in range(2)] == ["man with glasses #photo", ""]
  assert [part2[i]["au"].tolist() for i in range(2)] == [[0], [1]]


def test_dataset_prepared_by_the_previous_version_asks_to_prepare_again(tmp_path, monkeypatch):
  root = _write(tmp_path, "manifest.csv", CSV)
  data_dir = tmp_path / "tfds"
  old = tfds.core.Version("1.0.0")
  assert builders.VERSION > old and "1.0.0" in builders._FaceBuilder.RELEASE_NOTES
  with monkeypatch.context() as m:
    m.setattr(builders._FaceBuilder, "VERSION", old)
    sources.prepare("manifest", root, data_dir, image_size=SIZE)
  assert (data_dir / "manifest" / CONFIG / "1.0.0" / "dataset_info.json").is_file()
  assert not sources.is_prepared("manifest", data_dir, CONFIG)
  for open_it in (
    lambda: sources.info("manifest", data_dir, CONFIG),
    lambda: sources.open_source("manifest", "train", data_dir, CONFIG),
  ):
    with pytest.raises(
      FileNotFoundError,
      match=r"not prepared.*found version 1\.0\.0, prepared by an older clef-jax.*"
      r"input_pipeline\.prepare --dataset=manifest",
    ):
      open_it()
  sources.prepare("manifest", root, data_dir, image_size=SIZE)  # the new version, next to it
  assert sources.is_prepared("manifest", data_dir, CONFIG)
  src = sources.open_source("manifest", "train", data_dir, CONFIG)
  assert _str(src[0]["caption"]) == "Smiling, at the beach"
