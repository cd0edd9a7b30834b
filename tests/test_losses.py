"""Losses against independent numpy implementations of their paper formulas (explicit loops)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from clef_jax import losses

TAU = 0.1
SCALE = 7.5


def _unit(rng, n, d=8):
  z = rng.normal(size=(n, d))
  return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


def _logsumexp(v):
  m = max(v)
  return m + math.log(sum(math.exp(x - m) for x in v))


# ------------------------------------------------------------------------------------------
# Independent references (float64, explicit loops over the paper formulas).
# ------------------------------------------------------------------------------------------


def ref_supcon(z, is_pos, tau, valid=None):
  """Khosla et al. 2020, L_out: mean over anchors with ≥1 positive."""
  n = len(z)
  valid = np.ones(n, bool) if valid is None else valid
  z = z.astype(np.float64)
  terms = []
  for i in range(n):
    if not valid[i]:
      continue
    others = [a for a in range(n) if a != i and valid[a]]
    positives = [p for p in others if is_pos(i, p)]
    if not positives:
      continue
    lse = _logsumexp([z[i] @ z[a] / tau for a in others])
    terms.append(-sum(z[i] @ z[p] / tau - lse for p in positives) / len(positives))
  return float(np.mean(terms)) if terms else 0.0


def ref_nt_xent(z1, z2, tau, valid=None):
  """SimCLR NT-Xent: each of the 2B views against its twin, denominator all other views."""
  b = len(z1)
  valid = np.ones(b, bool) if valid is None else valid
  z = np.concatenate([z1, z2]).astype(np.float64)
  ok = np.concatenate([valid, valid])
  terms = []
  for i in range(2 * b):
    if not ok[i]:
      continue
    twin = (i + b) % (2 * b)
    denom = sum(math.exp(z[i] @ z[a] / tau) for a in range(2 * b) if a != i and ok[a])
    terms.append(-math.log(math.exp(z[i] @ z[twin] / tau) / denom))
  return float(np.mean(terms)) if terms else 0.0


def ref_image_activity(zimg, ztext, act, s, valid=None):
  n, k = len(zimg), len(ztext)
  valid = np.ones(n, bool) if valid is None else valid
  logits = s * zimg.astype(np.float64) @ ztext.astype(np.float64).T
  i2t = []
  for i in range(n):
    if valid[i] and act[i] >= 0:
      i2t.append(-(logits[i, act[i]] - _logsumexp(list(logits[i]))))
  t2i = []
  for c in range(k):
    positives = [i for i in range(n) if valid[i] and act[i] == c]
    if not positives:
      continue
    lse = _logsumexp([logits[j, c] for j in range(n) if valid[j]])
    t2i.append(-sum(logits[p, c] - lse for p in positives) / len(positives))
  mean = lambda v: float(np.mean(v)) if v else 0.0
  correct = [np.argmax(logits[i]) == act[i] for i in range(n) if valid[i] and act[i] >= 0]
  return 0.5 * (mean(i2t) + mean(t2i)), mean(correct)


def ref_clip(za, zb, s, valid=None):
  n = len(za)
  valid = np.ones(n, bool) if valid is None else valid
  logits = s * za.astype(np.float64) @ zb.astype(np.float64).T
  idx = [i for i in range(n) if valid[i]]
  if not idx:
    return 0.0
  a2b = [-(logits[i, i] - _logsumexp([logits[i, j] for j in idx])) for i in idx]
  b2a = [-(logits[i, i] - _logsumexp([logits[j, i] for j in idx])) for i in idx]
  return 0.5 * (np.mean(a2b) + np.mean(b2a))


def ref_ce(logits, targets, valid):
  """targets: [N, C] distributions (rows with valid=False skipped)."""
  terms = []
  for i in range(len(logits)):
    if not valid[i]:
      continue
    lse = _logsumexp(list(logits[i].astype(np.float64)))
    terms.append(-sum(targets[i, c] * (logits[i, c] - lse) for c in range(logits.shape[1])))
  return float(np.mean(terms)) if terms else 0.0


def ref_bce(logits, labels, w, valid):
  terms = []
  for i in range(logits.shape[0]):
    for j in range(logits.shape[1]):
      if not valid[i] or labels[i, j] < 0:
        continue
      p = 1.0 / (1.0 + math.exp(-float(logits[i, j])))
      y = float(labels[i, j])
      terms.append(-(w[j] * y * math.log(p) + (1 - y) * math.log(1 - p)))
  return float(np.mean(terms)) if terms else 0.0


# ------------------------------------------------------------------------------------------
# SupCon / pairing / NT-Xent.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "labels",
  [
    [0, 1, 0, 2, 1, 0, 3, 2, 5, 1],  # labels 3 and 5 have no positive
    [4] * 10,  # all rows the same activity
  ],
)
def test_supcon_matches_reference(labels):
  rng = np.random.default_rng(0)
  z = _unit(rng, len(labels))
  labels = np.array(labels)
  want = ref_supcon(z, lambda i, j: labels[i] == labels[j], TAU)
  np.testing.assert_allclose(losses.supcon(z, labels, TAU), want, rtol=1e-5)


def test_supcon_no_anchor_and_all_masked_give_zero():
  z = _unit(np.random.default_rng(1), 5)
  assert float(losses.supcon(z, np.arange(5), TAU)) == 0.0
  assert float(losses.supcon(z, np.zeros(5, int), TAU, mask=np.zeros(5, bool))) == 0.0


def test_supcon_padding_does_not_change_loss():
  rng = np.random.default_rng(2)
  z, labels = _unit(rng, 7), np.array([0, 1, 0, 1, 2, 2, 3])
  # Padding rows share labels with real rows: if they leaked in, the loss would change.
  zp = np.concatenate([z, _unit(rng, 3)])
  lp = np.concatenate([labels, [0, 1, 3]])
  mask = np.arange(10) < 7
  np.testing.assert_allclose(
    losses.supcon(zp, lp, TAU, mask), losses.supcon(z, labels, TAU), rtol=1e-6
  )
  np.testing.assert_allclose(
    losses.supcon(zp, lp, TAU, mask),
    ref_supcon(zp, lambda i, j: lp[i] == lp[j], TAU, mask),
    rtol=1e-5,
  )


def test_supcon_gradients_finite_with_masks_and_lonely_anchors():
  z = _unit(np.random.default_rng(3), 6)
  labels = np.array([0, 0, 1, 2, 3, 3])
  grad = jax.jit(jax.grad(lambda x, l, m: losses.supcon(x, l, TAU, m)))
  for mask in (np.array([1, 1, 1, 1, 0, 0], bool), np.zeros(6, bool), np.ones(6, bool)):
    assert np.isfinite(np.asarray(grad(z, labels, mask))).all()
  np.testing.assert_array_equal(grad(z, np.arange(6), np.ones(6, bool)), 0.0)


def _two_view_batch():
  # 6 images -> 12 views; (activity, subject) per image; activity -1 = none.
  act = np.array([0, 0, 1, 0, -1, 1])
  subj = np.array([0, 1, 1, 0, 2, 1])
  return np.tile(np.arange(6), 2), np.tile(act, 2), np.tile(subj, 2)


def ref_pair(pairing, inst, act, subj, i, j):
  if i == j:
    return False
  if inst[i] == inst[j]:
    return True
  if pairing == "instance" or act[i] < 0 or act[i] != act[j]:
    return False
  return pairing == "activity" or subj[i] != subj[j]


@pytest.mark.parametrize("pairing", losses.PAIRINGS)
def test_pairing_mask_matches_definition(pairing):
  inst, act, subj = _two_view_batch()
  got = np.asarray(
    losses.pairing_mask(pairing, instance_ids=inst, activity_ids=act, subject_ids=subj)
  )
  n = len(inst)
  want = np.array([[ref_pair(pairing, inst, act, subj, i, j) for j in range(n)] for i in range(n)])
  np.testing.assert_array_equal(got, want)
  # And the loss built on it equals the reference SupCon with that positive relation.
  z = _unit(np.random.default_rng(4), n)
  np.testing.assert_allclose(
    losses.supcon_from_mask(z, got, TAU),
    ref_supcon(z, lambda i, j: ref_pair(pairing, inst, act, subj, i, j), TAU),
    rtol=1e-5,
  )


def test_pairing_mask_errors():
  inst = np.arange(4)
  with pytest.raises(ValueError, match="unknown pairing 'simclr'"):
    losses.pairing_mask("simclr", instance_ids=inst)
  with pytest.raises(ValueError, match="needs activity_ids"):
    losses.pairing_mask("activity", instance_ids=inst)
  with pytest.raises(ValueError, match="needs subject_ids"):
    losses.pairing_mask("activity_cross_subject", instance_ids=inst, activity_ids=inst)


def test_embedding_health_against_numpy_and_at_the_two_extremes():
  """RankMe's effective rank (exp entropy of the normalised singular values) and the mean cosine
  of distinct rows against numpy; padding rows (mask) do not count; a batch at one point has
  rank 1, cosine 1, and SupCon at its collapse value."""
  rng = np.random.default_rng(0)
  z = _unit(rng, 12, 8)
  mask = np.arange(12) < 10
  h = jax.jit(losses.embedding_health)(z, mask)
  zv = z[:10]
  sv = np.linalg.svd(zv, compute_uv=False)
  p = sv / sv.sum()
  np.testing.assert_allclose(h["effective_rank"], np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
  gram = zv @ zv.T
  np.testing.assert_allclose(h["mean_cosine"], (gram.sum() - 10) / 90, rtol=1e-5, atol=1e-6)

  # Orthonormal rows fill the space evenly: rank = their number, cosine 0.
  eye = np.eye(8, dtype=np.float32)
  h = losses.embedding_health(eye)
  np.testing.assert_allclose(h["effective_rank"], 8.0, rtol=1e-5)
  np.testing.assert_allclose(h["mean_cosine"], 0.0, atol=1e-7)
  # Point collapse: one direction, every cosine 1, and the SupCon term sits at log(N - 1).
  point = np.tile(_unit(rng, 1, 8), (12, 1))
  h = losses.embedding_health(point)
  np.testing.assert_allclose(h["effective_rank"], 1.0, rtol=1e-4)
  np.testing.assert_allclose(h["mean_cosine"], 1.0, rtol=1e-5)
  labels = np.arange(12) % 3
  np.testing.assert_allclose(losses.supcon(point, labels, 0.1), math.log(11), rtol=1e-5)
  # ... and constant embeddings give that value for any positive set (what objectives log as
  # health/loss_pi_at_collapse); without a subject's own rows as negatives it is log(|A(i)|).
  pos = labels[:, None] == labels[None, :]
  flat = np.ones((12, 1), np.float32)
  np.testing.assert_allclose(losses.supcon_from_mask(flat, pos, 1.0), math.log(11), rtol=1e-6)
  subj = np.arange(12) // 4  # 3 subjects of 4 rows: A(i) = 8 other-subject rows + positives
  neg = subj[:, None] != subj[None, :]
  a = (pos | neg) & ~np.eye(12, dtype=bool)
  expected = np.mean(np.log(a.sum(1)))
  np.testing.assert_allclose(
    losses.supcon_from_mask(flat, pos, 1.0, None, neg), expected, rtol=1e-6
  )


def test_instance_pairing_is_simclr_nt_xent():
  # pairing='instance' (the SimCLR baseline of L_II'): SupCon whose only positive is the twin
  # view is NT-Xent over the 2B views, padded images (mask) left out as anchors and negatives.
  rng = np.random.default_rng(5)
  z1, z2 = _unit(rng, 5), _unit(rng, 5)
  z = np.concatenate([z1, z2])
  pos = losses.pairing_mask("instance", instance_ids=np.tile(np.arange(5), 2))
  np.testing.assert_allclose(
    losses.supcon_from_mask(z, pos, TAU), ref_nt_xent(z1, z2, TAU), rtol=1e-5
  )
  mask = np.array([1, 1, 0, 1, 0], bool)
  np.testing.assert_allclose(
    losses.supcon_from_mask(z, pos, TAU, np.tile(mask, 2)),
    ref_nt_xent(z1, z2, TAU, mask),
    rtol=1e-5,
  )


# ------------------------------------------------------------------------------------------
# Image–activity text, CLIP, description–name.
# ------------------------------------------------------------------------------------------


def test_image_activity_loss_matches_reference():
  rng = np.random.default_rng(6)
  zimg, ztext = _unit(rng, 9), _unit(rng, 5)
  act = np.array([0, 2, 2, 0, -1, 3, 0, 2, 3])  # activities 1 and 4 absent; one -1 row
  loss, aux = losses.image_activity_loss(zimg, ztext, act, SCALE)
  want, want_acc = ref_image_activity(zimg, ztext, act, SCALE)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(aux["i2t_accuracy"], want_acc, rtol=1e-6)
  # All images of one activity: text->image has a single text with all images as positives.
  same = np.zeros(9, int)
  np.testing.assert_allclose(
    losses.image_activity_loss(zimg, ztext, same, SCALE)[0],
    ref_image_activity(zimg, ztext, same, SCALE)[0],
    rtol=1e-5,
  )


def test_image_activity_loss_padding_and_all_masked():
  rng = np.random.default_rng(7)
  zimg, ztext = _unit(rng, 8), _unit(rng, 3)
  act = np.array([0, 1, 2, 0, 1, 2, 0, 1])
  mask = np.arange(8) < 5
  padded = losses.image_activity_loss(zimg, ztext, act, SCALE, mask)[0]
  np.testing.assert_allclose(
    padded, losses.image_activity_loss(zimg[:5], ztext, act[:5], SCALE)[0], rtol=1e-6
  )
  np.testing.assert_allclose(
    padded, ref_image_activity(zimg, ztext, act, SCALE, mask)[0], rtol=1e-5
  )
  loss, aux = losses.image_activity_loss(zimg, ztext, act, SCALE, np.zeros(8, bool))
  assert float(loss) == 0.0 and float(aux["i2t_accuracy"]) == 0.0
  grads = jax.jit(
    jax.grad(lambda a, b: losses.image_activity_loss(a, b, act, SCALE, mask)[0], argnums=(0, 1))
  )(jnp.asarray(zimg), jnp.asarray(ztext))
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_clip_and_description_name_loss_match_reference():
  rng = np.random.default_rng(8)
  za, zb = _unit(rng, 6), _unit(rng, 6)
  loss, aux = losses.clip_loss(za, zb, SCALE)
  np.testing.assert_allclose(loss, ref_clip(za, zb, SCALE), rtol=1e-5)
  logits = za @ zb.T
  np.testing.assert_allclose(aux["i2t_accuracy"], np.mean(logits.argmax(1) == np.arange(6)))
  np.testing.assert_allclose(aux["t2i_accuracy"], np.mean(logits.argmax(0) == np.arange(6)))
  np.testing.assert_allclose(
    losses.description_name_loss(za, zb, SCALE), ref_clip(za, zb, SCALE), rtol=1e-5
  )
  mask = np.array([1, 0, 1, 1, 0, 1], bool)
  np.testing.assert_allclose(
    losses.clip_loss(za, zb, SCALE, mask)[0], ref_clip(za[mask], zb[mask], SCALE), rtol=1e-5
  )
  assert float(losses.clip_loss(za, zb, SCALE, np.zeros(6, bool))[0]) == 0.0


# ------------------------------------------------------------------------------------------
# FER cross-entropy, AU logits and BCE.
# ------------------------------------------------------------------------------------------


def test_fer_l_in_softmax_ce_hard_soft_and_smoothing():
  # L_IN for FER: cross-entropy over the text-similarity logits s·<f(x_i), t_c>.
  rng = np.random.default_rng(9)
  zimg, zcls = _unit(rng, 6), _unit(rng, 4)
  logits = SCALE * zimg @ zcls.T
  labels = np.array([0, 3, -1, 1, 2, 3])  # -1 = unknown label
  mask = np.array([1, 1, 1, 1, 1, 0], bool)
  onehot = np.eye(4)[np.maximum(labels, 0)]
  known = mask & (labels >= 0)
  np.testing.assert_allclose(
    losses.softmax_ce(logits, labels, mask), ref_ce(logits, onehot, known), rtol=1e-5
  )
  np.testing.assert_allclose(
    losses.softmax_ce(logits, labels, mask, label_smoothing=0.2),
    ref_ce(logits, 0.8 * onehot + 0.05, known),
    rtol=1e-5,
  )
  votes = rng.integers(0, 5, size=(6, 4)).astype(np.float32)  # FER+-style vote counts
  votes[2] = 0  # no votes -> left out
  dist = votes / np.maximum(votes.sum(1, keepdims=True), 1)
  np.testing.assert_allclose(
    losses.softmax_ce(logits, votes), ref_ce(logits, dist, votes.sum(1) > 0), rtol=1e-5
  )
  with pytest.raises(ValueError, match="labels must have shape"):
    losses.softmax_ce(logits, labels[:3])
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.softmax_ce(logits, labels, label_smoothing=1.0)


def test_au_logits_and_prompt_pair():
  rng = np.random.default_rng(10)
  zimg, zau, zneg = _unit(rng, 5), _unit(rng, 3), _unit(rng, 3)
  bias = np.array([0.5, -1.0, 0.0], np.float32)
  want = np.array([[SCALE * zimg[i] @ zau[j] + bias[j] for j in range(3)] for i in range(5)])
  np.testing.assert_allclose(losses.au_logits(zimg, zau, SCALE, bias), want, rtol=1e-5)
  # sigmoid(pair logit) is the "with AU" probability of a 2-way softmax over the two prompts.
  pair = np.asarray(losses.au_prompt_pair_logits(zimg, zau, zneg, SCALE))
  for i in range(5):
    for j in range(3):
      a, b = SCALE * zimg[i] @ zau[j], SCALE * zimg[i] @ zneg[j]
      p_with = math.exp(a) / (math.exp(a) + math.exp(b))
      np.testing.assert_allclose(1 / (1 + math.exp(-pair[i, j])), p_with, rtol=1e-5)


def test_au_bce_matches_reference_and_torch():
  rng = np.random.default_rng(11)
  logits = rng.normal(size=(6, 4)).astype(np.float32) * 3
  labels = rng.integers(-1, 2, size=(6, 4))
  w = np.array([1.0, 3.0, 0.5, 10.0], np.float32)
  mask = np.array([1, 1, 1, 1, 1, 0], bool)
  got = losses.au_bce(logits, labels, w, mask)
  np.testing.assert_allclose(got, ref_bce(logits, labels, w, mask), rtol=1e-5)
  import torch  # pylint: disable=g-import-not-at-top

  keep = (labels >= 0) & mask[:, None]
  per = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w), reduction="none")(
    torch.tensor(logits), torch.tensor((labels == 1).astype(np.float32))
  )
  np.testing.assert_allclose(got, per.numpy()[keep].mean(), rtol=1e-5)
  np.testing.assert_allclose(
    losses.au_bce(logits, labels), ref_bce(logits, labels, np.ones(4), np.ones(6, bool)), rtol=1e-5
  )
  assert float(losses.au_bce(logits, -np.ones((6, 4), int), w)) == 0.0
  g = jax.jit(jax.grad(lambda x: losses.au_bce(x, labels, w, mask)))(logits)
  assert np.isfinite(np.asarray(g)).all() and not np.asarray(g)[5].any()


def test_au_pos_weight():
  labels = np.array([[1, 0, -1, 0, -1], [0, 0, -1, 0, 1], [0, 1, -1, 0, 1], [-1, 1, -1, 0, 1]])
  # AU0: 1 pos / 2 neg -> 2; AU1: 2/2 -> 1; AU2: nothing known -> 1; AU3: no pos -> max;
  # AU4: 3 pos / 0 neg -> 0, clipped to min.
  np.testing.assert_allclose(
    losses.au_pos_weight(labels, min_weight=0.1, max_weight=50.0), [2.0, 1.0, 1.0, 50.0, 0.1]
  )
  bad = labels.copy()
  bad[2, 3] = 9
  with pytest.raises(ValueError, match="value 9 at row 2, column 3"):
    losses.au_pos_weight(bad)


# ------------------------------------------------------------------------------------------
# 8 simulated devices: the jitted loss on sharded inputs equals the single-device value.
# ------------------------------------------------------------------------------------------


def test_losses_on_eight_devices_match_single_device():
  assert jax.device_count() == 8, "tests/conftest.py should provide 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  rng = np.random.default_rng(12)
  n = 16
  z1, z2 = _unit(rng, n), _unit(rng, n)
  ztext = _unit(rng, 5)
  inst, act, subj = np.tile(np.arange(n // 2), 2), rng.integers(-1, 5, n), rng.integers(0, 4, n)
  mask = np.arange(n) < 13
  au_labels = rng.integers(-1, 2, size=(n, 3))
  w = np.array([1.0, 2.0, 4.0], np.float32)

  def all_losses(z1, z2, ztext, inst, act, subj, mask, au_labels):
    pos = losses.pairing_mask(
      "activity_cross_subject", instance_ids=inst, activity_ids=act, subject_ids=subj
    )
    return {
      "supcon": losses.supcon_from_mask(z1, pos, TAU, mask),
      "instance": losses.supcon_from_mask(
        jnp.concatenate([z1, z2]),
        losses.pairing_mask("instance", instance_ids=jnp.tile(jnp.arange(n), 2)),
        TAU,
        jnp.tile(mask, 2),
      ),
      "image_activity": losses.image_activity_loss(z1, ztext, act, SCALE, mask)[0],
      "clip": losses.clip_loss(z1, z2, SCALE, mask)[0],
      "fer": losses.softmax_ce(SCALE * z1 @ ztext.T, jnp.maximum(act, 0), mask),
      "au": losses.au_bce(losses.au_logits(z1, ztext[:3], SCALE, 0.1), au_labels, w, mask),
    }

  args = (z1, z2, ztext, inst, act, subj, mask, au_labels)
  shardings = (rows, rows, rep, rows, rows, rows, rows, rows)
  single = jax.jit(all_losses)(*[jax.device_put(a, jax.devices()[0]) for a in args])
  sharded = jax.jit(all_losses)(*[jax.device_put(a, s) for a, s in zip(args, shardings)])
  assert sharded["supcon"].sharding.num_devices == 8 and single["supcon"].sharding.num_devices == 1
  for name in single:
    np.testing.assert_allclose(sharded[name], single[name], rtol=1e-5, atol=1e-5, err_msg=name)
