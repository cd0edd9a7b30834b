"""DISFA from its videos: Videos_LeftCamera/LeftVideoSN001_comp.avi (and the right camera).

The fixtures are short MJPEG AVIs written here with PyAV, frame t a flat grey level 20 + 15 t (so
a decoded frame tells its index), next to label files in DISFA's layout. Tried: the left and the
right camera (names matched without case), a video longer than its label files (both numbers
reported), a rerun that must not decode again, an interrupted extraction that resumes, a file
that is not a video, a subject with neither frames nor video, and `sources.prepare`, whose
frames go under <data_dir>/downloads and survive the temporary build folder.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from input_pipeline import sources
from input_pipeline.readers import common
from input_pipeline.readers import disfa
from tests import fixtures_au

LABELS = {
  "SN001": {1: [0, 2, 5, 3, 0], 12: [1, 3, 0, 4, 2]},  # 5 label lines
  "SN003": {25: [2, 1, 0, 4]},  # 4 label lines, its video has 6 frames
}


def _tree(root, camera="left", names=None):
  """DISFA labels without frame folders, plus videos for SN001 (5 frames) and SN003 (6)."""
  # No extracted frames (no <SN>/ folders): the reader must use the videos.
  fixtures_au.write_disfa(root, LABELS, num_images={"SN001": 0, "SN003": 0})
  assert not (root / "SN001").exists()
  cam = camera.capitalize()
  names = names or {"SN001": f"{cam}VideoSN001_comp.avi", "SN003": f"{cam}VideoSN003_comp.avi"}
  fixtures_au.write_video(root / f"Videos_{cam}Camera" / names["SN001"], 5)
  fixtures_au.write_video(root / f"Videos_{cam}Camera" / names["SN003"], 6)
  return root


def _frame_index(image: np.ndarray) -> int:
  """The t of a decoded fixture frame, from its grey level (away from the bright square)."""
  return int(round((float(image[30:, 30:].mean()) - 20) / 15))


def test_reads_frames_from_left_videos_and_reports_count_mismatch(tmp_path):
  root = _tree(tmp_path / "DISFA")
  frames = tmp_path / "frames"
  skips = common.Skips()
  examples = list(disfa.read(root, skips=skips, frames_dir=frames, progress=False))
  got = [(e["subject"], e["frame"]) for e in examples]
  assert got == [("SN001", t) for t in range(5)] + [("SN003", t) for t in range(4)]
  # Each example is the video's frame t (decoded, not re-ordered), labels of line t.
  assert [_frame_index(e["image"]) for e in examples] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
  sn1 = [e for e in examples if e["subject"] == "SN001"]
  au = list(disfa.AUS)
  assert [int(e["au_intensity"][au.index(12)]) for e in sn1] == [1, 3, 0, 4, 2]
  assert [int(e["au"][au.index(1)]) for e in sn1] == [0, 1, 1, 1, 0]  # intensity >= 2
  # Extracted once into frames_dir/<SN>/<t>.jpg, marked complete.
  assert sorted(os.listdir(frames / "SN001")) == [
    ".complete",
    "0.jpg",
    "1.jpg",
    "2.jpg",
    "3.jpg",
    "4.jpg",
  ]
  # SN003: 6 video frames against 4 label lines, reported with both numbers.
  assert skips.counts[disfa.SKIP_VIDEO_FRAME_COUNT] == 1
  (msg,) = skips.examples[disfa.SKIP_VIDEO_FRAME_COUNT]
  assert "RightVideo" not in msg and "6 video frames, 4 label lines" in msg and "SN003" in msg
  assert skips.counts[common.SKIP_IMAGE_WITHOUT_ROW] == 2


def test_right_camera_and_case_insensitive_names(tmp_path):
  names = {"SN001": "RightVideoSN001_Comp.avi", "SN003": "rightvideosn003.AVI"}
  root = _tree(tmp_path / "DISFA", camera="right", names=names)
  examples = list(disfa.read(root, camera="right", frames_dir=tmp_path / "f", progress=False))
  assert len(examples) == 9
  # With camera='left' there is neither a frame folder nor a left video: a clear error.
  with pytest.raises(
    common.DatasetError, match=r"no usable examples(.|\n)*LeftVideoSN001_comp.avi"
  ):
    list(disfa.read(root, camera="left", frames_dir=tmp_path / "g", progress=False))
  with pytest.raises(ValueError, match="camera must be one of"):
    disfa.read(root, camera="middle")


def test_extraction_is_not_repeated_and_resumes(tmp_path, monkeypatch):
  root = _tree(tmp_path / "DISFA")
  frames = tmp_path / "frames"
  first = [e["image"] for e in disfa.read(root, frames_dir=frames, progress=False)]
  mtimes = {n: os.stat(frames / "SN001" / n).st_mtime_ns for n in ("0.jpg", "1.jpg", "2.jpg")}

  import av  # pylint: disable=g-import-not-at-top

  def no_decoding(*args, **kwargs):
    raise AssertionError("a finished extraction was decoded again")

  monkeypatch.setattr(av, "open", no_decoding)
  again = [e["image"] for e in disfa.read(root, frames_dir=frames, progress=False)]
  np.testing.assert_array_equal(np.stack(again), np.stack(first))
  monkeypatch.undo()

  # An interrupted extraction (no .complete, frames 3 and 4 missing) adds only what is missing.
  os.remove(frames / "SN001" / disfa.COMPLETE)
  os.remove(frames / "SN001" / "3.jpg")
  os.remove(frames / "SN001" / "4.jpg")
  assert (
    disfa.extract_frames(
      str(disfa.find_video(str(root), "SN001", "left")), str(frames / "SN001"), progress=False
    )
    == 5
  )
  assert {n: os.stat(frames / "SN001" / n).st_mtime_ns for n in mtimes} == mtimes
  assert sorted(os.listdir(frames / "SN001"))[1:] == [f"{t}.jpg" for t in range(5)]


def test_bad_video_and_missing_subject(tmp_path):
  root = _tree(tmp_path / "DISFA")
  (root / "Videos_LeftCamera" / "LeftVideoSN003_comp.avi").write_bytes(b"RIFF not a video")
  with pytest.raises(
    common.DatasetError, match=r"LeftVideoSN003_comp.avi: cannot decode the video"
  ):
    list(disfa.read(root, frames_dir=tmp_path / "f", progress=False))
  os.remove(root / "Videos_LeftCamera" / "LeftVideoSN003_comp.avi")
  skips = common.Skips()
  examples = list(disfa.read(root, frames_dir=tmp_path / "f", skips=skips, progress=False))
  assert {e["subject"] for e in examples} == {"SN001"}
  (where,) = skips.examples[disfa.SKIP_SUBJECT_WITHOUT_FRAMES]
  assert "SN003" in where and "LeftVideoSN003_comp.avi" in where


def test_prepare_extracts_into_the_data_dir(tmp_path):
  root = _tree(tmp_path / "DISFA")
  data_dir = tmp_path / "data"
  src = sources.prepare("disfa", root, data_dir, "default_noalign")  # the videos have no landmarks
  frames = data_dir / "downloads" / "disfa_frames" / "left"
  assert (frames / "SN001" / disfa.COMPLETE).is_file() and (frames / "SN003" / "5.jpg").is_file()
  part = {s: p for p in (1, 2, 3) for s in disfa.PARTS[p]}
  ds = sources.open_source(
    "disfa", f"part{part['SN001']}", str(data_dir), "default_noalign", decode_images=False
  )
  assert len(ds) == 5 and os.path.isdir(src)
  info = sources.info("disfa", str(data_dir), "default_noalign")
  assert info["skips"][disfa.SKIP_VIDEO_FRAME_COUNT] == 1
  assert info["options"] == {"camera": "left"}  # no machine-specific path in the metadata
