"""The grain input pipeline: random-access source → per-process batches of numpy arrays.

Sources are anything with `__len__` and `__getitem__(i) -> dict` in the common example schema
(see `input_pipeline/readers/common.py`): a `tfds.data_source(...)`, or a plain list in tests.
`image` may be a uint8 array or encoded JPEG/PNG bytes; strings may be `bytes` (TFDS).

Training (`make_train_dataset`), grain's MapDataset idiom:

    range(N).seed(seed).shuffle().repeat()[process_index::process_count]   (or a sampler)
      .map(load: read, decode, ids)  .random_map(augment)  .batch(global_bs // process_count)
      .to_iter_dataset(read_options)  [.mp_prefetch(MultiprocessingOptions(worker_count))]

Each process yields its local batch; the trainer turns it into a global `jax.Array` with
`jax.make_array_from_process_local_data`. The iterator's `get_state()`/`set_state()` (or
`grain.checkpoint.CheckpointSave/Restore` in orbax) resume at the exact next batch.

Evaluation (`make_eval_batches`): one finite pass; process p reads the contiguous slice
`[p * ceil(N / P), (p + 1) * ceil(N / P))`, padded with `mask=False` examples to a static batch
shape, and every process yields the same number of batches.

Batch keys (dict of numpy arrays, leading dim = local batch size b):
  image          uint8 [b, S, S, 3] (or [b, 2, S, S, 3] with two views)
  au             int8 [b, J]        expression     int32 [b]       expression/votes float32 [b, 8]
  subject_id     int32 [b]  index into `subjects` (-1 unknown/empty)
  activity_id    int32 [b]  index into `tasks` (-1 unknown/empty)
  index          int64 [b]  the example's index in the source (-1 on eval padding)
  mask           bool [b]   True for real examples
  any other source key passes through (strings as numpy str arrays).
"""

from __future__ import annotations

import io
import math
import sys
import threading
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np
from PIL import Image

from input_pipeline import augment as augment_lib
from input_pipeline import sampler as sampler_lib

DEFAULT_KEYS = ("image", "au", "expression", "subject_id", "activity_id", "index", "mask")
DERIVED_KEYS = ("subject_id", "activity_id", "index", "mask")
# Requested keys that are silently dropped when a source lacks them.
OPTIONAL_KEYS = ("expression/votes",)
DEFAULT_LABEL_KEYS = ("subject", "task", "frame", "fold", "expression", "au")
# Internal key: an example's position in the global training stream (seeds its augmentation).
_POSITION = "_position"

# Canonical dtypes of schema fields; other keys keep numpy's inferred dtype.
_DTYPES = {
  "au": np.int8,
  "au_intensity": np.int8,
  "expression": np.int32,
  "frame": np.int32,
  "fold": np.int32,
  "expression/votes": np.float32,
  "subject_id": np.int32,
  "activity_id": np.int32,
  "index": np.int64,
  "mask": np.bool_,
}


def default_read_options() -> grain.ReadOptions:
  """Read threads per process and a buffer counted in *batches* (elements are batches here)."""
  return grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)


# ---------------------------------------------------------------------------------------------
# Decoding and per-example conversion.
# ---------------------------------------------------------------------------------------------


def to_str(value: Any) -> str:
  """Decodes TFDS `bytes` (or numpy bytes/str scalars) to `str`."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  return str(value)


def decode_image(value: Any, where: str = "image") -> np.ndarray:
  """Encoded JPEG/PNG bytes or an image array → uint8 [H, W, 3] RGB.

  Arrays may be [H, W] or [H, W, 1] (grey, replicated), [H, W, 3], or [H, W, 4] (alpha dropped).
  `where` names the example in error messages.
  """
  if isinstance(value, (bytes, np.bytes_)) or (
    isinstance(value, np.ndarray) and value.dtype.kind == "S"
  ):
    data = bytes(value.item() if isinstance(value, np.ndarray) else value)
    try:
      with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # Pillow raises several types for corrupt data.
      raise ValueError(f"{where}: cannot decode image bytes ({len(data)} bytes): {e}") from None
  array = np.asarray(value)
  if array.dtype != np.uint8:
    raise ValueError(f"{where}: image must be uint8 or encoded bytes, got {array.dtype}")
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{where}: image must be [H, W], [H, W, 1|3|4], got shape {array.shape}")
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return np.ascontiguousarray(array[..., :3])


def vocab(values: Sequence[Any] | np.ndarray) -> list[str]:
  """Sorted unique strings of `values` (bytes decoded), without the empty string."""
  return sorted({to_str(v) for v in np.asarray(values, dtype=object).ravel()} - {""})


def to_ids(values: Sequence[Any] | np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
  """Maps strings to their index in `vocabulary`: int32 [N]; unknown or empty → -1."""
  lookup = {v: i for i, v in enumerate(vocabulary)}
  return np.array(
    [lookup.get(to_str(v), -1) for v in np.asarray(values, dtype=object).ravel()], dtype=np.int32
  )


def label_table(
  source: Any, keys: Sequence[str] = DEFAULT_LABEL_KEYS, *, chunk_size: int = 1024
) -> dict[str, np.ndarray]:
  """Scans a source for non-image fields: `{key: array [N]}` (strings decoded to str arrays).

  O(N) reads of the source (a TFDS data source also decodes each image while doing so; pass
  `decoders={'image': tfds.decode.SkipDecoding()}` to `tfds.data_source` to avoid that). Sources
  with `__getitems__` (TFDS) are read in chunks of `chunk_size`.
  """
  n = len(source)
  columns: dict[str, list[Any]] = {k: [] for k in keys}
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, chunk_size):
    stop = min(n, start + chunk_size)
    if getitems is not None:
      chunk = getitems(list(range(start, stop)))
    else:
      chunk = [source[i] for i in range(start, stop)]
    for offset, example in enumerate(chunk):
      for k in keys:
        if k not in example:
          raise KeyError(
            f"label_table: example {start + offset} has no key {k!r}; it has {sorted(example)}"
          )
        v = example[k]
        if isinstance(v, (bytes, str, np.bytes_, np.str_)):
          v = to_str(v)
        columns[k].append(v)
  out = {}
  for k, values in columns.items():
    if values and isinstance(values[0], str):
      out[k] = np.array(values, dtype=str)
    else:
      out[k] = np.asarray(values, dtype=_DTYPES.get(k))
  return out


class DecodedCache:
  """Loaded examples (decoded images included) kept in memory, up to `max_mb` MiB.

  Training reads every example once per epoch; reading a TFDS ArrayRecord example, parsing it
  and decoding its JPEG cost 0.33 ms of the default job's 0.60 ms of host work per example
  (benchmarks/host_cost.py, colour on the device), so from the second epoch on the cache
  leaves only the augmentation to the host. Examples are added until the budget is full and never evicted.
  The budget is per process: every grain worker process holds its own cache. Thread-safe.
  """

  def __init__(self, max_mb: float):
    if max_mb < 0:
      raise ValueError(f"cache max_mb must be >= 0, got {max_mb!r}")
    self.max_bytes = int(max_mb * 2**20)
    self.bytes = 0
    self.examples: dict[int, dict[str, Any]] = {}
    self._lock = threading.Lock()

  def get(self, index: int) -> dict[str, Any] | None:
    return self.examples.get(index)

  def put(self, index: int, example: dict[str, Any]) -> None:
    size = sum(getattr(v, "nbytes", 0) for v in example.values())
    with self._lock:
      if index not in self.examples and self.bytes + size <= self.max_bytes:
        self.examples[index] = example
        self.bytes += size

  def __getstate__(self):  # a worker process starts with an empty cache of the same budget
    return {"max_bytes": self.max_bytes}

  def __setstate__(self, state):
    self.__init__(state["max_bytes"] / 2**20)


class ExampleLoader:
  """`loader(i)` reads `source[i]` and returns the requested keys as numpy values.

  The image is decoded to uint8 [H, W, 3] (not resized; the transforms do that). With a `cache`
  the loaded examples are kept and not read again (the values returned are the same).
  """

  def __init__(
    self,
    source: Any,
    keys: Sequence[str],
    subjects: Sequence[str] | None,
    tasks: Sequence[str] | None,
    cache: DecodedCache | None = None,
  ):
    self.source = source
    self.keys = tuple(keys)
    self.subject_ids = None if subjects is None else {s: i for i, s in enumerate(subjects)}
    self.task_ids = None if tasks is None else {t: i for i, t in enumerate(tasks)}
    self.cache = cache

  def __call__(self, index: int | tuple[int, int]) -> dict[str, Any]:
    position = None
    if isinstance(index, tuple):  # (global stream position, source index) from training
      position, index = index
    index = int(index)
    out = self.cache.get(index) if self.cache is not None else None
    if out is None:
      out = self._load(index)
      if self.cache is not None:
        self.cache.put(index, out)
    out = dict(out)  # the transforms replace values; the cached dict stays as loaded
    if position is not None:
      out[_POSITION] = np.int64(position)
    return out

  def _load(self, index: int) -> dict[str, Any]:
    example = self.source[index]
    where = f"example {index}"
    if "image/path" in example:
      where += f" ({to_str(example['image/path'])})"
    out = {}
    for key in self.keys:
      if key == "subject_id":
        out[key] = np.int32(self.subject_ids.get(to_str(_get(example, "subject", where)), -1))
      elif key == "activity_id":
        out[key] = np.int32(self.task_ids.get(to_str(_get(example, "task", where)), -1))
      elif key == "index":
        out[key] = np.int64(index)
      elif key == "mask":
        out[key] = np.bool_(True)
      elif key == "image":
        out[key] = decode_image(_get(example, key, where), where)
      else:
        out[key] = _convert(key, _get(example, key, where))
    return out


def _get(example: Mapping[str, Any], key: str, where: str) -> Any:
  if key not in example:
    raise KeyError(f"{where}: no key {key!r}; the example has {sorted(example)}")
  return example[key]


def _convert(key: str, value: Any) -> np.ndarray:
  if isinstance(value, (bytes, str, np.bytes_, np.str_)):
    return np.str_(to_str(value))
  array = np.asarray(value)
  if array.dtype.kind in "SO":
    return np.array([to_str(v) for v in array.ravel()], dtype=str).reshape(array.shape)
  dtype = _DTYPES.get(key)
  return array.astype(dtype) if dtype is not None else array


def _resolve_keys(
  source: Any,
  keys: Sequence[str],
  subjects: Sequence[str] | None,
  tasks: Sequence[str] | None,
  caller: str,
) -> tuple[str, ...]:
  """Checks requested keys against the first example; drops absent OPTIONAL_KEYS."""
  if len(source) == 0:
    raise ValueError(f"{caller}: the source is empty")
  first = source[0]
  if not isinstance(first, Mapping):
    raise TypeError(f"{caller}: source[0] must be a dict, got {type(first).__name__}")
  resolved = []
  for key in dict.fromkeys(keys):
    if key == "subject_id" and subjects is None:
      raise ValueError(
        f"{caller}: key 'subject_id' requested but subjects=None; pass "
        "subjects=vocab(label_table(source)['subject'])"
      )
    if key == "activity_id" and tasks is None:
      raise ValueError(
        f"{caller}: key 'activity_id' requested but tasks=None; pass "
        "tasks=vocab(label_table(source)['task'])"
      )
    if key in DERIVED_KEYS or key in first:
      resolved.append(key)
    elif key not in OPTIONAL_KEYS:
      raise KeyError(
        f"{caller}: requested key {key!r} is not in the source's examples "
        f"(example 0 has {sorted(first)}); derived keys: {list(DERIVED_KEYS)}"
      )
  return tuple(resolved)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only for the two numbers)

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"need 0 <= process_index < process_count, got process_index="
      f"{process_index}, process_count={process_count}"
    )
  return int(process_index), int(process_count)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size={global_batch_size} must be a positive multiple of "
      f"process_count={process_count}"
    )
  return global_batch_size // process_count


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------


class _SamplerPositions:
  """Random-access view: local position q → source index, from a sampler's global lists.

  Process p takes the contiguous slice [p * b, (p + 1) * b) of each step's global list, so the
  global batch assembled from all processes is the sampler's list in order.
  """

  def __init__(
    self, sampler: sampler_lib.ActivityBatchSampler, process_index: int, local_batch_size: int
  ):
    self.sampler = sampler
    self.offset = process_index * local_batch_size
    self.local_batch_size = local_batch_size

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, position: int) -> tuple[int, int]:
    step, j = divmod(int(position), self.local_batch_size)
    global_position = step * self.sampler.batch_size + self.offset + j
    return global_position, int(self.sampler.indices(step)[self.offset + j])


def _drop_position(element: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in element.items() if k != _POSITION}


def _with_position(position: int, index: int) -> tuple[int, int]:
  return int(position), int(index)


class _PositionSeededAugment(grain.transforms.Map):
  """Augments with an rng drawn from (seed, the example's position in the global stream).

  The global stream is the same whatever the number of processes, so the augmented global
  batch is too: 2 processes x 4 devices train exactly like 1 process x 8 devices.
  """

  def __init__(self, transform: augment_lib.TrainAugment, seed: int):
    self.transform = transform
    self.seed = int(seed)

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    element = dict(element)
    position = int(element.pop(_POSITION))
    rng = np.random.default_rng([self.seed, position])
    return self.transform.random_map(element, rng)


def make_train_dataset(
  source: Any,
  *,
  global_batch_size: int,
  seed: int,
  image_size: int,
  augment: augment_lib.AugmentConfig | Mapping[str, Any] | None,
  two_views: bool = False,
  subjects: Sequence[str] | None = None,
  tasks: Sequence[str] | None = None,
  keys: Sequence[str] = DEFAULT_KEYS,
  process_index: int | None = None,
  process_count: int | None = None,
  worker_count: int = 0,
  sampler: sampler_lib.ActivityBatchSampler | None = None,
  read_options: grain.ReadOptions | None = None,
  cache_mb: float = 0,
) -> grain.IterDataset:
  """Infinite, shuffled (or sampler-composed), augmented, per-process batches.

  Args:
    source: random-access source of schema dicts.
    global_batch_size: batch size over all processes; each process yields
      `global_batch_size // process_count` examples per batch.
    seed: in [0, 2**32); fixes order and augmentations (for a given process count).
    image_size: output side S.
    augment: `AugmentConfig` / dict / ConfigDict, or None for no random augmentation (eval resize).
    two_views: `image` becomes uint8 [b, 2, S, S, 3], two independent augmentations.
    subjects / tasks: vocabularies for `subject_id` / `activity_id` (see `vocab`).
    keys: batch keys; see the module docstring.
    process_index / process_count: default `jax.process_index()` / `jax.process_count()`.
    worker_count: > 0 adds `mp_prefetch` with that many worker processes (a script using it needs
      an `if __name__ == "__main__":` guard and parsed absl flags).
    sampler: an `ActivityBatchSampler` over the same source replacing the shuffle; its batch size
      must equal `global_batch_size`.
    read_options: grain read threads/buffer per process (default `default_read_options()`).
    cache_mb: keep up to this many MiB of loaded, decoded examples in memory per process
      (`DecodedCache`; 0 = read every example from the source each time). The batches are the
      same either way.

  Returns:
    A `grain.IterDataset` of dicts of numpy arrays; `iter()` gives a checkpointable iterator.
  """
  process_index, process_count = _process(process_index, process_count)
  local_bs = _local_batch_size(global_batch_size, process_count)
  if int(seed) != seed or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
  if worker_count < 0:
    raise ValueError(f"worker_count must be >= 0, got {worker_count!r}")
  keys = _resolve_keys(source, keys, subjects, tasks, "make_train_dataset")
  transform = augment_lib.TrainAugment(augment, image_size, two_views=two_views)

  if sampler is None:
    positions = (
      grain.MapDataset.range(len(source))
      .seed(int(seed))
      .shuffle()
      .repeat()
      .map_with_index(_with_position)[process_index::process_count]
    )
  else:
    if sampler.batch_size != global_batch_size:
      raise ValueError(
        f"sampler batch size {sampler.batch_size} (activities_per_batch="
        f"{sampler.activities_per_batch} x subjects_per_activity="
        f"{sampler.subjects_per_activity} x frames_per_group={sampler.frames_per_group}) "
        f"!= global_batch_size={global_batch_size}"
      )
    if sampler.num_examples != len(source):
      raise ValueError(
        f"sampler was built for {sampler.num_examples} examples but the source has {len(source)}"
      )
    positions = grain.MapDataset.source(_SamplerPositions(sampler, process_index, local_bs))

  cache = DecodedCache(cache_mb) if cache_mb else None
  ds = positions.map(ExampleLoader(source, keys, subjects, tasks, cache))
  if "image" in keys:
    ds = ds.map(_PositionSeededAugment(transform, int(seed)))
  else:
    ds = ds.map(_drop_position)
  ds = ds.batch(local_bs, drop_remainder=True)
  it_ds = ds.to_iter_dataset(read_options or default_read_options())
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it_ds


def make_train_iterator(source: Any, **kwargs: Any) -> grain.DatasetIterator:
  """`iter(make_train_dataset(source, **kwargs))`: has `get_state()` / `set_state()`."""
  return iter(make_train_dataset(source, **kwargs))


# ---------------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------------


class _PaddedLoader:
  """Position j of a process's padded slice → a loaded, transformed example, or the padding."""

  def __init__(
    self,
    loader: ExampleLoader,
    transform: augment_lib.EvalTransform | None,
    start: int,
    stop: int,
    padding: dict[str, Any],
  ):
    self.loader, self.transform = loader, transform
    self.start, self.stop, self.padding = start, stop, padding

  def __call__(self, j: int) -> dict[str, Any]:
    i = self.start + int(j)
    if i >= self.stop:
      return self.padding
    example = self.loader(i)
    return example if self.transform is None else self.transform.map(example)


def padding_like(example: Mapping[str, Any]) -> dict[str, Any]:
  """A padding example shaped like `example`: zeros, signed ints -1, strings '', mask False."""
  out = {}
  for key, value in example.items():
    value = np.asarray(value)
    if value.dtype.kind == "i":
      out[key] = np.full_like(value, -1)
    else:
      out[key] = np.zeros_like(value)
  return out


def num_eval_batches(num_examples: int, global_batch_size: int, process_count: int) -> int:
  """Batches every process yields: ceil(ceil(N / P) / (global_batch_size / P))."""
  local_bs = _local_batch_size(global_batch_size, process_count)
  return math.ceil(math.ceil(num_examples / process_count) / local_bs)


def make_eval_batches(
  source: Any,
  *,
  global_batch_size: int,
  image_size: int,
  keys: Sequence[str] = DEFAULT_KEYS,
  subjects: Sequence[str] | None = None,
  tasks: Sequence[str] | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  crop_fraction: float = 1.0,
  interpolation: str = "bicubic",
  read_options: grain.ReadOptions | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One finite pass over `source` in padded per-process batches.

  Process p reads examples `[p * m, min((p + 1) * m, N))`, `m = ceil(N / P)`, in order; each
  process yields `num_eval_batches(N, global_batch_size, P)` batches of the static local size
  `global_batch_size // P`; padding rows have `mask` False (see `padding_like`); `mask` is
  always included.

  Returns:
    An iterator of dicts of numpy arrays (images via `augment.eval_image`).
  """
  process_index, process_count = _process(process_index, process_count)
  local_bs = _local_batch_size(global_batch_size, process_count)
  keys = _resolve_keys(source, (*keys, "mask"), subjects, tasks, "make_eval_batches")
  n = len(source)
  per_process = math.ceil(n / process_count)
  start = min(n, process_index * per_process)
  stop = min(n, start + per_process)
  num_batches = num_eval_batches(n, global_batch_size, process_count)

  loader = ExampleLoader(source, keys, subjects, tasks)
  transform = None
  if "image" in keys:
    transform = augment_lib.EvalTransform(
      image_size, crop_fraction=crop_fraction, interpolation=interpolation
    )
  first = loader(0)
  padding = padding_like(first if transform is None else transform.map(first))
  if "mask" in padding:
    padding["mask"] = np.bool_(False)

  ds = grain.MapDataset.range(num_batches * local_bs).map(
    _PaddedLoader(loader, transform, start, stop, padding)
  )
  ds = ds.batch(local_bs, drop_remainder=True)
  return iter(ds.to_iter_dataset(read_options or default_read_options()))
