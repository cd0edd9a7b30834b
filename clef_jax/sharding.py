"""Device mesh, regex parameter-sharding rules and global batches.

Everything here is plain `jax.sharding`: a `Mesh` built with `jax.make_mesh`
(Auto axis types, so XLA's partitioner inserts the collectives), a tree of
`NamedSharding`s inferred from `(regex, tactic)` rules, and helpers to place
data on the mesh.

Leaf names are slash-joined key paths (`tree_paths`), e.g.
`visual/transformer/resblocks_0/attn/query/kernel`. Rules are matched against
the *parameter path* of a leaf: for a params tree this is the full name; for a
leaf inside an optax state (whose `mu`/`nu`/... are params-shaped subtrees) it
is the part after the last optax state field, so `visual/.*` also catches
`inner_states/trainable/inner_state/1/mu/visual/...`. A rule matches when its
regex full-matches the parameter path or the full name. Optax bookkeeping
leaves that hold no parameter path (step counts) are always replicated.

Tactics (strings from a config, or the objects below):
  'replicate'                          every device holds the whole array.
  'fsdp' / 'fsdp(axis="fsdp", min_size_mb=4)'
      shard the largest dimension divisible by the size of `axis` (a mesh axis
      name or a tuple of names); arrays smaller than `min_size_mb` MiB, arrays
      with no divisible dimension and axes of size 1 are replicated.
  'shard_dim(axis, dim)' / 'shard_dim(axis="fsdp", dim=0)'
      shard dimension `dim` (negative counts from the end) over `axis`; an
      indivisible dimension is an error.

Typical rules (the last one is the usual default):
  [('.*/kernel', 'fsdp(min_size_mb=4)'), ('.*', 'replicate')]
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
AxisName = Union[str, tuple[str, ...]]

DEFAULT_MESH = (("data", -1), ("fsdp", 1))
BATCH_AXES = ("data", "fsdp")


# ---------------------------------------------------------------------------
# Mesh.
# ---------------------------------------------------------------------------


def make_mesh(
  mesh_spec: Sequence[Sequence[Any]] = DEFAULT_MESH, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """Builds a mesh with Auto axis types from `[(name, size), ...]`.

  Args:
    mesh_spec: pairs `(axis_name, size)` (lists or tuples, as ml_collections
      gives them). At most one size may be -1: it takes whatever the other
      sizes leave of the device count.
    devices: devices to lay out; defaults to `jax.devices()` (all processes).

  Returns:
    `jax.sharding.Mesh` with `AxisType.Auto` on every axis.

  Raises:
    ValueError: naming the spec when it is malformed, has two -1 sizes,
      repeats a name, or its sizes do not multiply to the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  try:
    pairs = [tuple(p) for p in mesh_spec]
  except TypeError:
    pairs = None
  if (
    not pairs
    or any(len(p) != 2 for p in pairs)
    or any(not isinstance(name, str) or not name for name, _ in pairs)
    or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for _, s in pairs)
  ):
    raise ValueError(
      f"mesh spec {mesh_spec!r}: expected a non-empty list of "
      "(axis_name: str, size: int) pairs, e.g. [('data', -1), ('fsdp', 1)]"
    )
  names = [name for name, _ in pairs]
  sizes = [int(s) for _, s in pairs]
  if len(set(names)) != len(names):
    raise ValueError(f"mesh spec {mesh_spec!r}: axis names repeat: {names}")
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh spec {mesh_spec!r}: at most one size may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh spec {mesh_spec!r}: sizes must be positive or -1, got {sizes}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % known:
      raise ValueError(
        f"mesh spec {mesh_spec!r}: the fixed sizes (product {known}) do not "
        f"divide the device count {n}"
      )
    sizes[sizes.index(-1)] = n // known
  elif known != n:
    raise ValueError(
      f"mesh spec {mesh_spec!r}: sizes multiply to {known} but there are "
      f"{n} devices (use -1 for one axis to take the rest)"
    )
  return jax.make_mesh(
    tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names), devices=devices
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy of an array on every mesh device."""
  return NamedSharding(mesh, P())


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The axes of `BATCH_AXES` ('data', 'fsdp') that `mesh` has, in order."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  if not axes:
    raise ValueError(f"mesh axes {mesh.axis_names} contain none of the batch axes {BATCH_AXES}")
  return axes


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim split over all of ('data', 'fsdp') the mesh has."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


# ---------------------------------------------------------------------------
# Leaf names.
# ---------------------------------------------------------------------------


def path_str(keypath: Sequence[Any]) -> str:
  """Slash-joined name of a `jax.tree_util` key path ('visual/ln_pre/scale')."""
  return jax.tree_util.keystr(tuple(keypath), simple=True, separator="/")


def param_path_str(keypath: Sequence[Any]) -> str:
  """Name of the parameter a leaf stands for.

  The key path after its last attribute key (a NamedTuple / dataclass field
  such as optax's `mu`); the full name when there is none (plain params
  trees). Empty for optax bookkeeping leaves such as `count`.
  """
  keypath = tuple(keypath)
  last_attr = -1
  for i, k in enumerate(keypath):
    if isinstance(k, jax.tree_util.GetAttrKey):
      last_attr = i
  return path_str(keypath[last_attr + 1 :])


def compile_regexes(regexes: Sequence[str] | str, where: str) -> list[re.Pattern[str]]:
  """Compiles config regexes over leaf names (one string or a list); a bad one is a ValueError
  naming `where[i]` (e.g. 'optim.freeze[2]')."""
  if isinstance(regexes, str):
    regexes = [regexes]
  compiled = []
  for i, r in enumerate(regexes or ()):
    try:
      compiled.append(re.compile(r))
    except (re.error, TypeError) as e:
      raise ValueError(f"{where}[{i}] {r!r}: bad regex ({e})") from None
  return compiled


def full_match_any(patterns: Sequence[re.Pattern[str]], name: str) -> bool:
  """Whether any pattern full-matches the leaf name (the rule for every name regex here:
  sharding rules, optim.freeze / lr_mults / no_decay, dont_load)."""
  return any(p.fullmatch(name) for p in patterns)


def tree_paths(tree: PyTree) -> list[str]:
  """Slash-joined names of the leaves of `tree`, in `jax.tree.leaves` order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# ---------------------------------------------------------------------------
# Tactics and rules.
# ---------------------------------------------------------------------------


def _axis_size(mesh: Mesh, axis: AxisName, where: str) -> int:
  axes = (axis,) if isinstance(axis, str) else tuple(axis)
  for a in axes:
    if a not in mesh.shape:
      raise ValueError(f"{where}: mesh axis {a!r} not in mesh axes {tuple(mesh.axis_names)}")
  return math.prod(mesh.shape[a] for a in axes)


@dataclasses.dataclass(frozen=True)
class Replicate:
  """Every device holds the whole array."""

  def spec(self, shape: tuple[int, ...], itemsize: int, mesh: Mesh, where: str) -> P:
    del shape, itemsize, mesh, where
    return P()


@dataclasses.dataclass(frozen=True)
class Fsdp:
  """Shard the largest divisible dimension over `axis` (ties: lowest dim)."""

  axis: AxisName = "fsdp"
  min_size_mb: float = 4.0

  def spec(self, shape: tuple[int, ...], itemsize: int, mesh: Mesh, where: str) -> P:
    size = _axis_size(mesh, self.axis, where)
    nbytes = math.prod(shape) * itemsize
    if size == 1 or not shape or nbytes < self.min_size_mb * 2**20:
      return P()
    for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
      if shape[dim] % size == 0:
        spec = [None] * len(shape)
        spec[dim] = self.axis
        return P(*spec)
    return P()


@dataclasses.dataclass(frozen=True)
class ShardDim:
  """Shard dimension `dim` over `axis`."""

  axis: AxisName
  dim: int

  def spec(self, shape: tuple[int, ...], itemsize: int, mesh: Mesh, where: str) -> P:
    del itemsize
    size = _axis_size(mesh, self.axis, where)
    if not -len(shape) <= self.dim < len(shape):
      raise ValueError(f"{where}: dim {self.dim} out of range for shape {shape}")
    dim = self.dim % len(shape)
    if shape[dim] % size:
      raise ValueError(
        f"{where}: dim {self.dim} of shape {shape} is not divisible by the "
        f"size {size} of mesh axis {self.axis!r}"
      )
    spec = [None] * len(shape)
    spec[dim] = self.axis
    return P(*spec)


Tactic = Union[Replicate, Fsdp, ShardDim]
_TACTICS: dict[str, Callable[..., Tactic]] = {
  "replicate": Replicate,
  "fsdp": Fsdp,
  "shard_dim": ShardDim,
}


def parse_tactic(tactic: str | Tactic) -> Tactic:
  """Parses 'replicate', 'fsdp(axis="fsdp", min_size_mb=4)', 'shard_dim(...)'.

  Arguments must be Python literals (parsed with `ast.literal_eval`; nothing
  is executed). Tactic objects pass through unchanged.
  """
  if isinstance(tactic, (Replicate, Fsdp, ShardDim)):
    return tactic
  if not isinstance(tactic, str):
    raise ValueError(
      f"sharding tactic {tactic!r}: expected a string such as 'replicate' or 'fsdp(min_size_mb=4)'"
    )
  try:
    node = ast.parse(tactic.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"sharding tactic {tactic!r}: not parseable ({e.msg})") from None
  if isinstance(node, ast.Name):
    name, args, kwargs = node.id, [], {}
  elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    name = node.func.id
    try:
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
      raise ValueError(f"sharding tactic {tactic!r}: arguments must be literals") from None
    if None in kwargs:
      raise ValueError(f"sharding tactic {tactic!r}: ** arguments not allowed")
  else:
    raise ValueError(f"sharding tactic {tactic!r}: expected NAME or NAME(...)")
  if name not in _TACTICS:
    raise ValueError(
      f"sharding tactic {tactic!r}: unknown tactic {name!r}, expected one of {sorted(_TACTICS)}"
    )
  try:
    result = _TACTICS[name](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"sharding tactic {tactic!r}: {e}") from None
  if isinstance(getattr(result, "axis", None), list):
    result = dataclasses.replace(result, axis=tuple(result.axis))
  return result


def _parse_rules(rules: Sequence[Sequence[Any]]) -> list[tuple[str, re.Pattern[str], Tactic]]:
  parsed = []
  for i, rule in enumerate(rules):
    if isinstance(rule, str) or len(rule) != 2:
      raise ValueError(f"sharding rule #{i} {rule!r}: expected a (regex, tactic) pair")
    regex, tactic = rule
    (pattern,) = compile_regexes([regex], f"sharding rule #{i} {rule!r}: regex")
    try:
      parsed.append((regex, pattern, parse_tactic(tactic)))
    except ValueError as e:
      raise ValueError(f"sharding rule #{i}: {e}") from None
  return parsed


def infer_sharding(abstract_tree: PyTree, rules: Sequence[Sequence[Any]], mesh: Mesh) -> PyTree:
  """Tree of `NamedSharding`s for `abstract_tree` from `(regex, tactic)` rules.

  Args:
    abstract_tree: arrays or `jax.ShapeDtypeStruct`s (anything with `shape`
      and `dtype`): params, optax states, or a dict of both.
    rules: `(regex, tactic)` pairs; the first whose regex full-matches a
      leaf's parameter path (or full name) decides its sharding.
    mesh: the device mesh.

  Returns:
    A tree of the same structure with a `NamedSharding` per leaf.

  Raises:
    ValueError: a leaf no rule matches (named), a malformed rule, an unknown
      mesh axis, or a `shard_dim` that does not divide.
  """
  parsed = _parse_rules(rules)

  def leaf_sharding(keypath, leaf) -> NamedSharding:
    full, name = path_str(keypath), param_path_str(keypath)
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    if not name:  # optax bookkeeping (counts), not a parameter
      return replicated(mesh)
    for regex, pattern, tactic in parsed:
      if pattern.fullmatch(name) or pattern.fullmatch(full):
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
        itemsize = np.dtype(dtype).itemsize
        where = f"leaf {full!r} (shape {shape}), rule {regex!r}"
        return NamedSharding(mesh, tactic.spec(shape, itemsize, mesh, where))
    raise ValueError(
      f"no sharding rule matches leaf {full!r} (parameter path {name!r}, "
      f"shape {shape}); add a rule, e.g. a final ('.*', 'replicate')"
    )

  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_tree)


# ---------------------------------------------------------------------------
# Placing data and params on the mesh.
# ---------------------------------------------------------------------------


def global_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
  """This process's batch slice → global `jax.Array`s over the batch axes.

  Args:
    local_batch: (nested) dict of numpy arrays `[b, ...]`, `b` = global batch
      / process count; every process passes its own slice.
    mesh: the device mesh.

  Returns:
    The same tree of `jax.Array`s `[b * process_count, ...]` with
    `batch_sharding(mesh)`.
  """
  sharding = batch_sharding(mesh)
  split = math.prod(mesh.shape[a] for a in batch_axes(mesh))
  nproc = jax.process_count()

  def put(keypath, x):
    x = np.asarray(x)
    if x.ndim == 0 or (x.shape[0] * nproc) % split:
      raise ValueError(
        f"batch entry {path_str(keypath)!r} of shape {x.shape}: the global "
        f"batch (leading dim x {nproc} processes) must be divisible by the "
        f"{split} batch shards of mesh {dict(mesh.shape)}"
      )
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(put, local_batch)


def _check_same_structure(tree: PyTree, shardings: PyTree, what: str) -> None:
  a = set(tree_paths(tree))
  b = set(tree_paths(shardings))
  if a != b:
    raise ValueError(
      f"{what}: tree and shardings differ; only in tree: "
      f"{sorted(a - b)[:10]}, only in shardings: {sorted(b - a)[:10]}"
    )


def reshard(tree: PyTree, shardings: PyTree) -> PyTree:
  """Puts a tree (host numpy or `jax.Array`s) onto the mesh with `shardings`.

  Numpy leaves must hold the full (global) value on every process; each
  process copies out the pieces its devices need (works multi-process).

  Raises:
    ValueError: naming the leaves that are in only one of the two trees, or a
      leaf whose shape does not fit its sharding.
  """
  _check_same_structure(tree, shardings, "reshard")

  def put(keypath, x, sharding):
    if isinstance(x, jax.Array):
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    try:
      return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
    except ValueError as e:
      raise ValueError(f"reshard: leaf {path_str(keypath)!r} of shape {x.shape}: {e}") from None

  return jax.tree_util.tree_map_with_path(put, tree, shardings)


def sharded_init(
  init_fn: Callable[[jax.Array], PyTree], rng: jax.Array, rules: Sequence[Sequence[Any]], mesh: Mesh
) -> tuple[PyTree, PyTree]:
  """Initialises a tree directly in its sharded layout (shape first).

  `jax.eval_shape(init_fn, rng)` → `infer_sharding` →
  `jax.jit(init_fn, out_shardings=...)(rng)`, so no device ever holds the
  whole unsharded tree.

  Args:
    init_fn: `rng -> tree` (e.g. `lambda r: model.init(r, ...)['params']`).
    rng: PRNG key, the same on every process.
    rules: sharding rules, see `infer_sharding`.
    mesh: the device mesh.

  Returns:
    `(tree, shardings)`: the initialised tree of global `jax.Array`s and the
    matching tree of `NamedSharding`s.
  """
  abstract = jax.eval_shape(init_fn, rng)
  shardings = infer_sharding(abstract, rules, mesh)
  return jax.jit(init_fn, out_shardings=shardings)(rng), shardings
