"""Paths are URLs: the one path layer (`etils.epath`) for every file the project reads or writes.

  p = paths.path("~/runs/x")          # epath.Path('/home/me/runs/x'): local paths made absolute
  p = paths.path("gs://bucket/runs/x")  # epath.Path('gs://bucket/runs/x'): left as the URL
  paths.append_text(p / "metrics.jsonl", line)   # appends locally, rewrites the object on GCS

orbax and TFDS use epath too, so a workdir or data_dir on `gs://` goes through one client. It
lives in the input pipeline (which imports nothing from clef_jax) so that both halves share it.

Which client serves `gs://`: epath picks TensorFlow's `tf.io.gfile` whenever TensorFlow is
installed, unless `EPATH_USE_TF=false`, when it uses fsspec's `gcsfs`. Importing this module sets
`EPATH_USE_TF=false` (unless the environment says otherwise), so gcsfs is the client, here and in
orbax's metadata files: it is the one that can be tested against a GCS server on localhost
(`STORAGE_EMULATOR_HOST`), while TensorFlow's GCS file system has its endpoint compiled in
(`https://www.googleapis.com/storage/v1/` in tsl's gcs_file_system.cc; only timeouts, caches and
retries are configurable), so it can only ever talk to the real service. Array data goes through
clients of its own, pointed at an emulator by their own variables: tensorstore (orbax's arrays:
`TENSORSTORE_GCS_HTTP_URL`) and google-cloud-cpp (ArrayRecord reads: `CLOUD_STORAGE_EMULATOR_ENDPOINT`).

GCS objects cannot be appended to or renamed in place: `append_text` rewrites the object, and a
"folder" is only a prefix, so nothing here relies on a rename being atomic on remote storage.
"""

from __future__ import annotations

import os
import tempfile
from typing import Union

os.environ.setdefault("EPATH_USE_TF", "false")  # before epath picks a backend (it caches it)

from etils import epath  # noqa: E402

PathLike = Union[str, os.PathLike]
REMOTE_SCHEMES = ("gs://", "s3://", "az://", "hf://")


def is_remote(p: PathLike) -> bool:
  """True for a URL (`gs://…`) epath serves remotely; False for a local path."""
  return os.fspath(p).startswith(REMOTE_SCHEMES)


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path`: a local path expanded (`~`) and made absolute, a URL kept as is."""
  s = os.fspath(p)
  if is_remote(s):
    return epath.Path(s)
  return epath.Path(os.path.abspath(os.path.expanduser(s)))


def text(p: PathLike) -> str:
  """`p` as the string users see and pass on (an absolute local path, or the URL)."""
  return os.fspath(path(p))


def makedirs(p: PathLike, what: str = "folder") -> epath.Path:
  """Makes the local folder `p` (and its parents); for a URL checks that its bucket exists,
  since there a folder is only a prefix (and gcsfs would otherwise *create* a missing bucket).
  Either failure is an OSError naming `p` (`what` says which setting it is, e.g. '--workdir')."""
  p = path(p)
  try:
    if not is_remote(p):
      p.mkdir(parents=True, exist_ok=True)
      return p
    scheme, rest = os.fspath(p).split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    found = epath.Path(bucket).exists()
  except Exception as e:  # pylint: disable=broad-except  (OSError, HTTP and auth errors)
    raise OSError(f"{what} {p}: cannot be created or reached ({type(e).__name__}: {e})") from None
  if not found:
    raise FileNotFoundError(
      f"{what} {p}: the bucket {bucket} does not exist or this account cannot see it"
    )
  return p


def append_text(p: PathLike, data: str) -> None:
  """Appends `data` to the text file `p` (created if absent). A GCS object is immutable: the
  object is read and written again whole (fine for a metrics file of some thousand lines)."""
  p = path(p)
  if not is_remote(p):
    with open(p, "a", encoding="utf-8") as f:
      f.write(data)
    return
  old = p.read_text(encoding="utf-8") if p.exists() else ""
  p.write_text(old + data, encoding="utf-8")


def write_text(p: PathLike, data: str) -> None:
  """Writes the text file `p` whole: locally through a temporary file and a rename (a reader
  never sees half a file); on GCS one object upload, which is atomic by itself."""
  p = path(p)
  if is_remote(p):
    p.write_text(data, encoding="utf-8")
    return
  fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=os.fspath(p.parent))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(data)
    os.replace(tmp, p)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def rmtree(p: PathLike) -> None:
  """Removes the folder `p` and everything under it (nothing if it does not exist)."""
  p = path(p)
  if p.exists():
    p.rmtree(missing_ok=True)


def upload_tree(src: PathLike, dst: PathLike, *, last: str | None = None) -> None:
  """Copies the local folder `src` into `dst` (local or remote), file by file; the file named
  `last` (relative to `src`) is copied after all the others, so a reader that waits for it
  (e.g. TFDS's `dataset_info.json`) never sees a partial copy."""
  src, dst = os.fspath(path(src)), path(dst)
  files = sorted(
    os.path.relpath(os.path.join(root, name), src)
    for root, _, names in os.walk(src)
    for name in names
  )
  files.sort(key=lambda rel: rel == last)  # stable: `last` moves to the end
  for rel in files:
    target = dst / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(src, rel), "rb") as f:
      target.write_bytes(f.read())
