"""The trainer core: one init, the sharded train state, and the train-step factory.

Everything that trains in this project goes through these three (the Flax-examples idiom):

  spec  = trainer.state_spec(config, objective, mesh)      # shapes, shardings, optimizer; no memory
  state = trainer.init_state(spec, config, init=loaded)    # materialised on the mesh (+ a loaded init)
  step  = trainer.jit_train_step(config, objective, spec, mesh)   # (state, batch) -> (state, metrics)

or `state, spec = trainer.create_train_state(config, objective, mesh, init=loaded)` for the first
two in one call. `clef_jax.train` (the loop: data, checkpoints, evaluators, logging) is built on
it, and so are the benchmarks and `benchmarks/reproduce.py`.

The state is a plain pytree `{'params', 'opt', 'step'}` (orbax saves it as it is); params are the
model's `{'visual', 'text', 'logit_scale'}` plus the objective's `'heads'`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clef_jax import models
from clef_jax import objectives
from clef_jax import optim
from clef_jax import pretrained
from clef_jax import sharding

PyTree = Any


def init_params(objective: objectives.Objective, rng: jax.Array) -> dict[str, Any]:
  """Fresh params of the objective's model plus its heads (the one init; jit/eval_shape it)."""
  r_model, r_heads = jax.random.split(rng)
  return {**models.init(objective.model, r_model), "heads": objective.init_heads(r_heads)}


@dataclasses.dataclass(frozen=True)
class StateSpec:
  """What a train state will be, before any memory is allocated."""

  abstract: PyTree  # jax.ShapeDtypeStruct tree of {'params', 'opt', 'step'}, with shardings
  shardings: PyTree  # NamedSharding tree of the same structure
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  objective: objectives.Objective
  seed: int
  init_params: Callable  # jitted: rng -> params (sharded)
  new_state: Callable  # jitted: params -> state (sharded)


def state_spec(config, objective: objectives.Objective, mesh) -> StateSpec:
  """Shapes and shardings of the train state (shape-first: `jax.eval_shape`, no allocation)."""
  rng = jax.random.key(config.seed)
  abstract_params = jax.eval_shape(lambda r: init_params(objective, r), rng)
  tx, schedule = optim.make_optimizer(config.optim, abstract_params)
  abstract = jax.eval_shape(lambda p: _new_state(p, tx), abstract_params)
  shardings = sharding.infer_sharding(abstract, config.sharding_rules, mesh)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  return StateSpec(
    abstract,
    shardings,
    tx,
    schedule,
    objective,
    int(config.seed),
    init_params=jax.jit(lambda r: init_params(objective, r), out_shardings=shardings["params"]),
    new_state=jax.jit(lambda p: _new_state(p, tx), out_shardings=shardings),
  )


def _new_state(params, tx) -> dict[str, Any]:
  return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def init_state(spec: StateSpec, config, init: PyTree | None = None) -> dict[str, Any]:
  """A fresh train state on the mesh; `init` (host params, e.g. `pretrained.load`) replaces the
  fresh weights except those matching `config.dont_load` (and any missing from `init`, such as
  new heads), with loud errors on shape mismatches (`pretrained.merge_params`)."""
  param_sh = spec.shardings["params"]
  params = spec.init_params(jax.random.key(spec.seed))
  if init is not None:
    fresh = jax.device_get(params)
    loaded = {**init, "heads": fresh["heads"]}
    merged = pretrained.merge_params(loaded, fresh, config.dont_load)
    params = sharding.reshard(merged, param_sh)
    logging.info("Initialised from %s (kept init for %s).", config.init, list(config.dont_load))
  return spec.new_state(params)


def create_train_state(config, objective, mesh, init: PyTree | None = None):
  """(state, spec): `state_spec` then `init_state` in one call."""
  spec = state_spec(config, objective, mesh)
  with jax.set_mesh(mesh):
    return init_state(spec, config, init), spec


def clamp_logit_scale(params: dict[str, Any], model_config) -> dict[str, Any]:
  """CLIP's clamp of the learnable log temperature at `logit_scale_max` after each update."""
  if "logit_scale" not in params:
    return params
  return {**params, "logit_scale": jnp.minimum(params["logit_scale"], model_config.logit_scale_max)}


def make_train_step(
  config, objective: objectives.Objective, tx, schedule, label_map: np.ndarray | None = None
) -> Callable:
  """The step `(state, batch) -> (state, metrics)`, to be jitted (see `jit_train_step`).

  One AdamW update of the objective's loss (with `config.accum_steps` micro-batches sharing one
  negative pool), the logit-scale clamp, and the norms of grads, updates and params. The rng of
  a step is `fold_in(key(seed), step)`, so a resumed run draws the same numbers.
  `label_map` [num_canonical] int32 turns canonical expression ids into trained-class ids.
  """
  base_rng = jax.random.key(config.seed)
  accum = int(config.accum_steps)

  def train_step(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    batch = objectives.with_class_labels(batch, label_map)
    (loss, aux), grads = objectives.grad_fn(objective, state["params"], batch, rng, accum)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = clamp_logit_scale(optax.apply_updates(state["params"], updates), config.model)
    metrics = {
      "loss": loss,
      **aux,
      "lr": schedule(step),
      "l2_grads": optax.tree.norm(grads),
      "l2_updates": optax.tree.norm(updates),
      "l2_params": optax.tree.norm(params),
    }
    return {"params": params, "opt": opt, "step": step + 1}, metrics

  return train_step


def jit_train_step(config, objective, spec: StateSpec, mesh, label_map=None) -> Callable:
  """`make_train_step` jitted with the state's shardings and the state buffers donated."""
  return jax.jit(
    make_train_step(config, objective, spec.tx, spec.schedule, label_map),
    donate_argnums=(0,),
    out_shardings=(spec.shardings, sharding.replicated(mesh)),
  )
