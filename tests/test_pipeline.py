"""Tests of the grain input pipeline, augmentations and the activity batch sampler.

Tiny in-memory sources (lists of schema dicts with random 16×16 images); no TFDS, no JAX devices.
"""

import io

from absl import flags
import numpy as np
from PIL import Image
import pytest

from input_pipeline import augment
from input_pipeline import pipeline
from input_pipeline import sampler as sampler_lib

N = 40
SUBJECTS = ["F001", "F002", "M001", "M002"]
TASKS = ["T1", "T2", "T3"]
KEYS = ("image", "au", "expression", "subject_id", "activity_id", "index", "mask")


def make_source(n=N, size=16, encode_every=0):
  """Schema dicts; subjects/tasks as bytes (as TFDS gives them); every k-th image PNG-encoded."""
  rng = np.random.default_rng(1234)
  source = []
  for i in range(n):
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if encode_every and i % encode_every == 0:
      buf = io.BytesIO()
      Image.fromarray(image).save(buf, format="PNG")
      image = buf.getvalue()
    source.append(
      {
        "image": image,
        "image/path": f"/data/{i}.png",
        "subject": SUBJECTS[i % 4].encode(),
        "task": "" if i % 7 == 0 else TASKS[i % 3],
        "activity_text": "",
        "frame": i,
        "au": rng.integers(-1, 2, 5).astype(np.int8),
        "au_intensity": np.zeros(5, np.int8),
        "expression": i % 8,
        "fold": 1 + i % 3,
      }
    )
  return source


@pytest.fixture(scope="module")
def source():
  return make_source()


def train_iter(source, **kwargs):
  args = dict(
    global_batch_size=8,
    seed=0,
    image_size=12,
    augment={},
    subjects=SUBJECTS,
    tasks=TASKS,
    process_index=0,
    process_count=1,
  )
  args.update(kwargs)
  return pipeline.make_train_iterator(source, **args)


def take(iterator, k):
  return [next(iterator) for _ in range(k)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# --------------------------------------------------------------------------------------------
# Train pipeline.
# --------------------------------------------------------------------------------------------


def test_train_batch_contents(source):
  batch = next(train_iter(source))
  assert batch["image"].shape == (8, 12, 12, 3) and batch["image"].dtype == np.uint8
  assert batch["au"].shape == (8, 5) and batch["au"].dtype == np.int8
  assert batch["index"].dtype == np.int64 and batch["mask"].dtype == np.bool_
  assert batch["mask"].all()
  for k, i in enumerate(batch["index"]):
    example = source[i]
    np.testing.assert_array_equal(batch["au"][k], example["au"])
    assert batch["expression"][k] == example["expression"]
    assert batch["subject_id"][k] == SUBJECTS.index(example["subject"].decode())
    expected_task = TASKS.index(example["task"]) if example["task"] else -1
    assert batch["activity_id"][k] == expected_task


@pytest.mark.parametrize("use_sampler", [False, True])
def test_global_batch_independent_of_process_count(source, use_sampler):
  """Images (augmentations included) and labels of the global batch do not depend on P."""
  kwargs = dict(two_views=True, augment={"crop_scale": (0.3, 1.0)})
  if use_sampler:
    table = pipeline.label_table(source)
    kwargs["sampler"] = sampler_lib.ActivityBatchSampler(
      pipeline.to_ids(table["subject"], SUBJECTS),
      pipeline.to_ids(table["task"], TASKS),
      table["frame"],
      activities_per_batch=2,
      subjects_per_activity=2,
      frames_per_group=2,
      min_frame_gap=1,
      seed=5,
    )
  one = take(train_iter(source, **kwargs), 3)
  two = [take(train_iter(source, process_index=p, process_count=2, **kwargs), 3) for p in range(2)]
  for step in range(3):
    for key in one[step]:
      merged = np.concatenate([two[0][step][key], two[1][step][key]])
      if use_sampler:
        np.testing.assert_array_equal(one[step][key], merged, err_msg=key)
      else:  # shuffled stream: process p holds every P-th global position
        glob = np.empty_like(merged)
        glob[0::2], glob[1::2] = two[0][step][key], two[1][step][key]
        np.testing.assert_array_equal(one[step][key], glob, err_msg=key)


def test_determinism_by_seed(source):
  a = take(train_iter(source, seed=3), 6)
  b = take(train_iter(source, seed=3), 6)
  c = take(train_iter(source, seed=4), 6)
  assert_batches_equal(a, b)
  assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_process_shards_disjoint_and_cover_epoch(source):
  # Global batch 8 over 2 processes: 4 per process, an epoch of 40 = 5 steps.
  shards = []
  for p in range(2):
    batches = take(train_iter(source, process_index=p, process_count=2), 10)
    assert all(b["image"].shape[0] == 4 for b in batches)
    idx = np.concatenate([b["index"] for b in batches])
    shards.append((idx[:20], idx[20:]))
  for epoch in range(2):
    a, b = shards[0][epoch], shards[1][epoch]
    assert not set(a.tolist()) & set(b.tolist())
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(N))
  assert not np.array_equal(shards[0][0], shards[0][1])  # each epoch reshuffled


def test_global_batch_not_divisible(source):
  with pytest.raises(ValueError, match=r"global_batch_size=9.*process_count=2"):
    train_iter(source, global_batch_size=9, process_index=0, process_count=2)


def test_missing_key_and_vocab_errors(source):
  with pytest.raises(KeyError, match="'smile'"):
    train_iter(source, keys=("image", "smile"))
  with pytest.raises(ValueError, match="subjects=None"):
    train_iter(source, subjects=None)
  # An optional key absent from the source is dropped instead.
  batch = next(train_iter(source, keys=("index", "expression/votes")))
  assert set(batch) == {"index"}


def test_encoded_images_and_grey(source):
  src = make_source(n=8, encode_every=2)
  src[1]["image"] = src[1]["image"][..., 0]  # a grey [H, W] array
  batch = next(train_iter(src, augment=None, image_size=16, keys=("image", "index")))
  for k, i in enumerate(batch["index"]):
    reference = make_source(n=8)[i]["image"]
    if i == 1:
      reference = np.repeat(reference[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(batch["image"][k], reference)
  bad = make_source(n=4)
  bad[2]["image"] = b"not an image"
  with pytest.raises(ValueError, match=r"example 2 \(/data/2.png\): cannot decode"):
    pipeline.ExampleLoader(bad, ("image",), None, None)(2)


def test_two_views(source):
  batch = next(train_iter(source, two_views=True, augment={"crop_scale": (0.3, 1.0)}))
  assert batch["image"].shape == (8, 2, 12, 12, 3)
  differ = [not np.array_equal(v[0], v[1]) for v in batch["image"]]
  assert all(differ)


def test_state_round_trip(source):
  it = train_iter(source, two_views=True)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 4)
  fresh = train_iter(source, two_views=True)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 4), expected)


@pytest.mark.slow
def test_state_round_trip_with_mp_prefetch_worker(source):
  flags.FLAGS.mark_as_parsed()
  it = train_iter(source, worker_count=1)
  take(it, 2)
  state = it.get_state()
  expected = take(it, 3)
  it.close()
  fresh = train_iter(source, worker_count=1)
  fresh.set_state(state)
  got = take(fresh, 3)
  fresh.close()
  assert_batches_equal(got, expected)
  # Same batches as the in-process pipeline.
  plain = train_iter(source)
  take(plain, 2)
  assert_batches_equal(take(plain, 3), expected)


class CountingSource:
  """A source that counts its reads per index."""

  def __init__(self, examples):
    self.examples, self.reads = examples, {}

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    self.reads[i] = self.reads.get(i, 0) + 1
    return self.examples[i]


def test_decoded_cache_gives_the_same_batches_and_reads_each_example_once():
  """Three epochs with the cache: the batches (augmentations included, PNG-encoded images
  among them) equal the uncached pipeline's, and every example is read from the source once;
  the iterator state round-trips with the cache on."""
  examples = make_source(encode_every=3)
  plain = take(train_iter(CountingSource(examples), two_views=True), 15)  # 120 draws of 40
  counted = CountingSource(examples)
  it = train_iter(counted, two_views=True, cache_mb=64)
  counted.reads = {}  # building the pipeline read example 0 to check the keys
  got = take(it, 12)
  state = it.get_state()
  got += take(it, 3)
  assert_batches_equal(got, plain)
  assert set(counted.reads) == set(range(N)) and max(counted.reads.values()) == 1
  fresh = train_iter(CountingSource(examples), two_views=True, cache_mb=64)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), plain[12:])


def test_decoded_cache_stops_at_its_budget():
  """A budget of 5 images' bytes (16x16x3 each) keeps 4 examples, since their labels count too;
  the rest are read again every epoch. A negative budget is an error."""
  cache = pipeline.DecodedCache(5 * 16 * 16 * 3 / 2**20)
  counted = CountingSource(make_source())
  loader = pipeline.ExampleLoader(counted, KEYS, SUBJECTS, TASKS, cache)
  for _ in range(3):
    for i in range(N):
      out = loader((i, i))
      assert out["index"] == i
  assert len(cache.examples) == 4 and cache.bytes <= cache.max_bytes
  assert sum(counted.reads[i] == 1 for i in range(N)) == 4
  assert sum(counted.reads[i] == 3 for i in range(N)) == N - 4
  assert cache.bytes > 4 * 16 * 16 * 3  # the labels count too: a fifth image would not fit
  with pytest.raises(ValueError, match="cache max_mb must be >= 0"):
    pipeline.DecodedCache(-1)


def test_decoded_cache_does_not_travel_to_worker_processes():
  """Pickled (as grain sends the dataset to mp_prefetch workers), a cache arrives empty with
  the same budget, not with the parent's examples."""
  import pickle

  cache = pipeline.DecodedCache(1)
  cache.put(0, {"image": np.zeros((8, 8, 3), np.uint8)})
  copy = pickle.loads(pickle.dumps(cache))
  assert copy.examples == {} and copy.max_bytes == cache.max_bytes and len(cache.examples) == 1


# --------------------------------------------------------------------------------------------
# Eval batches.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("process_count,global_bs", [(1, 16), (2, 12), (3, 6)])
def test_eval_batches_padded(source, process_count, global_bs):
  seen = []
  counts = []
  for p in range(process_count):
    batches = list(
      pipeline.make_eval_batches(
        source,
        global_batch_size=global_bs,
        image_size=16,
        subjects=SUBJECTS,
        tasks=TASKS,
        process_index=p,
        process_count=process_count,
      )
    )
    counts.append(len(batches))
    for b in batches:
      assert b["image"].shape == (global_bs // process_count, 16, 16, 3)
      assert ((b["index"] >= 0) == b["mask"]).all()
      assert (b["image"][~b["mask"]] == 0).all()
      for k in np.flatnonzero(b["mask"]):
        np.testing.assert_array_equal(b["image"][k], source[b["index"][k]]["image"])
      seen.extend(b["index"][b["mask"]].tolist())
  per_process = -(-N // process_count)
  assert counts == [-(-per_process // (global_bs // process_count))] * process_count
  assert sorted(seen) == list(range(N))


# --------------------------------------------------------------------------------------------
# Augmentations.
# --------------------------------------------------------------------------------------------

IDENTITY = dict(
  crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, greyscale_prob=0.0
)


def test_augment_shapes_dtypes():
  image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  cfg = augment.AugmentConfig()
  out = augment.augment_image(image, np.random.default_rng(1), cfg, 14)
  assert out.shape == (14, 14, 3) and out.dtype == np.uint8
  t = augment.TrainAugment(cfg, 14, two_views=True)
  out = t.random_map({"image": image, "x": 1}, np.random.default_rng(2))
  assert out["image"].shape == (2, 14, 14, 3) and out["x"] == 1


def test_flip_really_flips():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  rng = np.random.default_rng(0)
  flipped = augment.augment_image(
    image, rng, augment.AugmentConfig(**{**IDENTITY, "flip_prob": 1.0}), 16
  )
  np.testing.assert_array_equal(flipped, np.fliplr(image))
  same = augment.augment_image(image, rng, augment.AugmentConfig(**IDENTITY), 16)
  np.testing.assert_array_equal(same, image)


def test_greyscale_is_luma():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  cfg = augment.AugmentConfig(**{**IDENTITY, "greyscale_prob": 1.0})
  out = augment.augment_image(image, np.random.default_rng(0), cfg, 16).astype(float)
  luma = image.astype(float) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2
  for c in range(3):
    assert np.abs(out[..., c] - luma).max() <= 1.0


def test_brightness_scales_pixels():
  image = np.random.default_rng(0).integers(0, 200, (16, 16, 3), dtype=np.uint8)
  cfg = augment.AugmentConfig(
    **{**IDENTITY, "jitter_prob": 1.0, "brightness": 0.3, "contrast": 0.0, "saturation": 0.0}
  )
  factors = []
  for seed in range(5):
    out = augment.augment_image(image, np.random.default_rng(seed), cfg, 16).astype(float)
    x = image.astype(float)
    f = (out * x).sum() / (x * x).sum()  # least-squares factor
    assert 0.7 - 0.01 <= f <= 1.3 + 0.01
    assert np.abs(out - np.clip(f * x, 0, 255)).max() <= 1.5
    factors.append(f)
  assert np.ptp(factors) > 0.01


def test_random_resized_crop_box_respects_ranges():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, right, bottom = augment.random_resized_crop_box(
      100, 120, rng, (0.3, 0.5), (0.8, 1.25)
    )
    w, h = right - left, bottom - top
    assert 0 <= left < right <= 120 and 0 <= top < bottom <= 100
    assert 0.3 - 0.02 <= w * h / 12000 <= 0.5 + 0.02
    assert 0.8 - 0.05 <= w / h <= 1.25 + 0.05


def test_eval_transform_deterministic_center_crop():
  small = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
  big = np.kron(small, np.ones((2, 2, 1), np.uint8))  # 16 × 24, each pixel a 2×2 block
  t = augment.EvalTransform(8, interpolation="nearest")
  a = t.map({"image": big})["image"]
  b = t.map({"image": big})["image"]
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, small[:, 2:10])  # centred 16×16 square, halved


def test_augment_config_errors():
  with pytest.raises(KeyError, match="crop_scal"):
    augment.AugmentConfig.from_config({"crop_scal": (0.5, 1.0)})
  with pytest.raises(ValueError, match="flip_prob"):
    augment.AugmentConfig(flip_prob=1.5)
  with pytest.raises(ValueError, match="crop_scale"):
    augment.AugmentConfig(crop_scale=(0.9, 0.5))


# --------------------------------------------------------------------------------------------
# Activity batch sampler.
# --------------------------------------------------------------------------------------------


def sampler_labels():
  """4 activities × 5 subjects × 30 frames, plus 50 examples without activity; shuffled."""
  a, s, f = np.meshgrid(np.arange(4), np.arange(5), np.arange(30), indexing="ij")
  activity = np.concatenate([a.ravel(), -np.ones(50, int)])
  subject = np.concatenate([s.ravel(), np.arange(50) % 5])
  frame = np.concatenate([f.ravel(), np.arange(50)])
  perm = np.random.default_rng(0).permutation(len(frame))
  return subject[perm], activity[perm], frame[perm]


def make_sampler(seed=0, **kwargs):
  args = dict(
    activities_per_batch=3, subjects_per_activity=2, frames_per_group=3, min_frame_gap=10, seed=seed
  )
  args.update(kwargs)
  return sampler_lib.ActivityBatchSampler(*sampler_labels(), **args)


def test_sampler_batch_structure():
  subject, activity, frame = sampler_labels()
  s = make_sampler()
  assert s.batch_size == 18
  for step in range(30):
    idx = s.indices(step).reshape(3, 2, 3)
    assert (activity[idx] >= 0).all()
    acts = activity[idx]
    assert (acts == acts[:, :1, :1]).all() and len(set(acts[:, 0, 0])) == 3
    subs = subject[idx]
    assert (subs == subs[:, :, :1]).all()
    assert all(len(set(subs[a, :, 0])) == 2 for a in range(3))
    gaps = np.diff(frame[idx], axis=-1)
    assert (gaps >= 10).all()


def test_sampler_deterministic_per_step():
  a, b, c = make_sampler(seed=7), make_sampler(seed=7), make_sampler(seed=8)
  np.testing.assert_array_equal(a.indices(5), b.indices(5))
  np.testing.assert_array_equal(b.indices(3), make_sampler(seed=7).indices(3))
  assert not np.array_equal(a.indices(5), a.indices(6))
  assert not np.array_equal(a.indices(5), c.indices(5))


def test_sampler_fallbacks_with_replacement():
  # One activity with 2 subjects, each with 2 frames 1 apart: needs every fallback.
  subject, activity, frame = [0, 0, 1, 1, 0], [0, 0, 0, 0, -1], [0, 1, 5, 6, 3]
  s = sampler_lib.ActivityBatchSampler(
    subject,
    activity,
    frame,
    activities_per_batch=2,
    subjects_per_activity=3,
    frames_per_group=3,
    min_frame_gap=10,
    seed=0,
  )
  idx = s.indices(0)
  assert idx.shape == (18,)
  assert set(idx.tolist()) <= {0, 1, 2, 3}
  groups = idx.reshape(6, 3)
  for g in groups:  # a group stays within one subject
    assert len({subject[i] for i in g}) == 1


def test_sampler_errors(source):
  with pytest.raises(ValueError, match="no example has both an activity"):
    sampler_lib.ActivityBatchSampler(
      [0, 1],
      [-1, -1],
      [0, 1],
      activities_per_batch=1,
      subjects_per_activity=1,
      frames_per_group=1,
      min_frame_gap=0,
      seed=0,
    )
  table = pipeline.label_table(source)
  s = sampler_lib.ActivityBatchSampler(
    pipeline.to_ids(table["subject"], SUBJECTS),
    pipeline.to_ids(table["task"], TASKS),
    table["frame"],
    activities_per_batch=2,
    subjects_per_activity=2,
    frames_per_group=1,
    min_frame_gap=4,
    seed=0,
  )
  with pytest.raises(ValueError, match=r"sampler batch size 4 .*global_batch_size=8"):
    train_iter(source, sampler=s)


def test_train_with_sampler_processes_slice_global_list(source):
  table = pipeline.label_table(source)
  subject_ids = pipeline.to_ids(table["subject"], SUBJECTS)
  activity_ids = pipeline.to_ids(table["task"], TASKS)
  s = sampler_lib.ActivityBatchSampler(
    subject_ids,
    activity_ids,
    table["frame"],
    activities_per_batch=2,
    subjects_per_activity=2,
    frames_per_group=2,
    min_frame_gap=4,
    seed=0,
  )
  local = [
    take(train_iter(source, sampler=s, process_index=p, process_count=2), 3) for p in range(2)
  ]
  for step in range(3):
    global_index = np.concatenate([local[p][step]["index"] for p in range(2)])
    np.testing.assert_array_equal(global_index, s.indices(step))
    batch_activity = np.concatenate([local[p][step]["activity_id"] for p in range(2)])
    np.testing.assert_array_equal(batch_activity, activity_ids[s.indices(step)])
    assert (batch_activity >= 0).all()
  # Resuming a sampler-driven iterator continues at the same step.
  it = train_iter(source, sampler=s, process_index=1, process_count=2)
  take(it, 1)
  fresh = train_iter(source, sampler=s, process_index=1, process_count=2)
  fresh.set_state(it.get_state())
  assert_batches_equal(take(fresh, 2), local[1][1:3])


def test_label_table_and_vocab(source):
  table = pipeline.label_table(source, keys=("subject", "task", "frame"))
  assert table["subject"].tolist() == [SUBJECTS[i % 4] for i in range(N)]
  assert table["frame"].tolist() == list(range(N))
  assert pipeline.vocab(table["task"]) == TASKS
  ids = pipeline.to_ids([b"T2", "", "T9"], TASKS)
  assert ids.tolist() == [1, -1, -1] and ids.dtype == np.int32
