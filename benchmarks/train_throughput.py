"""Training-step throughput: our jitted step vs transformers' PyTorch CLIPModel, in one run.

  python benchmarks/train_throughput.py                # tiny (112 px), default (64 px), S/16 (112 px)
  python benchmarks/train_throughput.py --quick        # 1 step per round, 2 rounds
  python benchmarks/train_throughput.py --variants=S/16 --batch_size=64 --steps=4 --repeats=5

Both sides do the same work per step on the same batch (uint8 images [B, S, S, 3], activity ids
[B]) and the same architecture, at two precisions each, like with like:
  ours   `clef_jax.trainer.jit_train_step` (donated state), exactly the trainer's step,
         with `configs/pretrain.py` and `pretrain.objective='clip'`: normalise the images, image
         tower on B images, text tower on the K=8 BP4D activity texts, each image against its
         activity's text in CLIP's symmetric InfoNCE, backward, global-norm clip 1.0, AdamW
         (decay mask, warmup+cosine schedule), logit-scale clamp, metrics (loss, accuracies,
         grad/param/update norms). fp32, and `model.dtype=bfloat16` (fp32 params, optimizer,
         losses; bf16 matmuls accumulated in fp32).
  torch  `transformers.CLIPModel` built from a `CLIPConfig` with our widths, layers, heads, patch,
         image size, vocab, context and quick_gelu: the same normalisation, towers, gather, loss,
         `clip_grad_norm_(1.0)`, `torch.optim.AdamW` (fused on CPU when available, decay on
         matrices only) and clamp; eager mode (no torch.compile). fp32, and
         `torch.autocast('cpu', bfloat16)` around the forward (its fastest CPU setting).
Timing: compile/warm up first, then `--repeats` rounds; each round times `--steps` steps of the
four steps and a 2048^2 matmul in fp32 and in bf16 x bf16 -> fp32 (the order alternates between
rounds, to spread the noise of a shared machine). It prints the median images/s of each, the
ratios at fp32, at bf16 and best-vs-best, and the achieved FLOP/s of our step (FLOPs from XLA's
`cost_analysis()` of the compiled step) as a share of the same-precision matmul of the same rounds.

Threads: torch uses `torch.set_num_threads(os.cpu_count())`; XLA uses all cores by default.
Compiled steps go to JAX's persistent compilation cache (`--cache_dir`), so a rerun starts fast.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import ml_collections
import numpy as np

from clef_jax import models
from clef_jax import objectives
from clef_jax import prompts
from clef_jax import sharding
from clef_jax import tokenizer as tokenizer_lib
from clef_jax import trainer
from configs import pretrain as pretrain_config

BATCH_KEYS = ("image", "activity_id", "subject_id", "index", "mask")


# ------------------------------------------------------------------------------------------
# Machine description (printed by every benchmark).
# ------------------------------------------------------------------------------------------


def machine_line() -> str:
  """CPU model, core count and the 1/5/15-minute load averages."""
  model = platform.processor() or "?"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  isa = " ".join(models.precision.cpu_bf16_flags()) or "no bf16 matrix ISA"
  return (
    f"{model} ({isa}); {os.cpu_count()} cores; load average "
    f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; jax {jax.__version__} "
    f"{jax.devices()[0].platform} x{jax.device_count()}"
  )


# ------------------------------------------------------------------------------------------
# Our step, as the trainer builds it.
# ------------------------------------------------------------------------------------------


def bench_config(
  variant: str, image_size: int, batch_size: int, objective: str = "clip", dtype: str = "float32"
) -> ml_collections.ConfigDict:
  """configs/pretrain.py for `variant` at `image_size` (variant 'default': the default job's
  model, a 6-layer Ti/16 at 64 px), one view per image, no sampler, compute `dtype`."""
  if variant == "default":
    config = pretrain_config.get_config()
  else:
    config = pretrain_config.get_config(f"variant={variant},image_size={image_size}")
  config.batch_size = batch_size
  config.pretrain.objective = objective
  config.data.two_views = False
  config.data.sampler.enabled = False
  config.optim.total_steps = config.total_steps
  config.model.dtype = dtype
  return config


def build_state_and_step(
  config: ml_collections.ConfigDict, objective: objectives.Objective
) -> tuple[Any, Callable, jax.sharding.Mesh]:
  """(state, jitted step, mesh) from the trainer core, as `clef_jax.train` makes them."""
  mesh = sharding.make_mesh(config.mesh)
  state, spec = trainer.create_train_state(config, objective, mesh)
  return state, trainer.jit_train_step(config, objective, spec, mesh), mesh


def random_batch(
  batch_size: int, image_size: int, num_activities: int, seed: int = 0, views: int = 1
) -> dict[str, np.ndarray]:
  """A host batch with the pretraining keys: image uint8 [B, S, S, 3] (or [B, 2, S, S, 3])."""
  rng = np.random.default_rng(seed)
  shape = (batch_size,) + ((views,) if views > 1 else ()) + (image_size, image_size, 3)
  return {
    "image": rng.integers(0, 256, shape, dtype=np.uint8),
    "activity_id": rng.integers(0, num_activities, (batch_size,)).astype(np.int32),
    "subject_id": rng.integers(0, 4, (batch_size,)).astype(np.int32),
    "index": np.arange(batch_size, dtype=np.int64),
    "mask": np.ones((batch_size,), bool),
  }


def xla_flops(compiled) -> float:
  """FLOPs of a compiled computation from XLA's cost analysis (a multiply-add counts 2)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise RuntimeError(f"XLA cost_analysis() gave no 'flops' entry: {cost!r}")
  return float(cost["flops"])


class OurStep:
  """Our compiled train step on a fixed device batch; `run(n)` does n steps and blocks."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    activity_texts: list[str],
    host_batch: dict[str, np.ndarray],
  ):
    tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
    model = models.build(config.model)
    objective = objectives.pretrain_objective(config, model, tok, activity_texts)
    self.state, step, self.mesh = build_state_and_step(config, objective)
    with jax.set_mesh(self.mesh):
      self.batch = sharding.global_batch(host_batch, self.mesh)
      self.compiled = step.lower(self.state, self.batch).compile()
    self.flops = xla_flops(self.compiled)
    self.tokens = tok(activity_texts)

  def run(self, n: int) -> float:
    """Seconds for n steps (dispatch to results ready)."""
    t0 = time.perf_counter()
    with jax.set_mesh(self.mesh):
      for _ in range(n):
        self.state, metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready((self.state, metrics))
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      raise FloatingPointError(f"our step gave loss {loss}")
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------
# The same step in transformers + PyTorch.
# ------------------------------------------------------------------------------------------


def hf_clip_config(mc: ml_collections.ConfigDict):
  """A transformers CLIPConfig with our model config's architecture (argmax text pooling)."""
  import transformers  # pylint: disable=g-import-not-at-top

  if mc.text_pooling != "argmax":
    raise ValueError(f"model text_pooling={mc.text_pooling!r}: this benchmark maps 'argmax' only")
  text = dict(
    vocab_size=mc.vocab_size,
    hidden_size=mc.text_width,
    intermediate_size=models.variants.mlp_dim(mc, mc.text_width),
    num_hidden_layers=mc.text_layers,
    num_attention_heads=mc.text_heads,
    max_position_embeddings=mc.context_length,
    hidden_act=mc.act,
    eos_token_id=2,
    bos_token_id=0,
    pad_token_id=1,
  )  # 2: legacy argmax pooling
  vision = dict(
    hidden_size=mc.vision_width,
    intermediate_size=models.variants.mlp_dim(mc, mc.vision_width),
    num_hidden_layers=mc.vision_layers,
    num_attention_heads=mc.vision_heads,
    image_size=mc.image_size,
    patch_size=mc.patch_size,
    hidden_act=mc.act,
  )
  return transformers.CLIPConfig(
    text_config=text,
    vision_config=vision,
    projection_dim=mc.embed_dim,
    logit_scale_init_value=mc.logit_scale_init,
  )


class TorchStep:
  """transformers.CLIPModel forward + CLIP loss + backward + clip + AdamW on a fixed batch."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    tokens: np.ndarray,
    host_batch: dict[str, np.ndarray],
    bf16: bool = False,
  ):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top

    self.torch = torch
    self.bf16 = bf16  # torch.autocast('cpu', bfloat16) around the forward: its fastest CPU mode
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    self.model = transformers.CLIPModel(hf_clip_config(config.model)).train()
    oc = config.optim
    decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
      p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    groups = [
      {"params": decay, "weight_decay": oc.weight_decay},
      {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = dict(lr=oc.lr, betas=(oc.b1, oc.b2), eps=oc.eps)
    try:
      self.opt = torch.optim.AdamW(groups, fused=True, **kwargs)
      self.optimizer = "AdamW(fused=True)"
    except (RuntimeError, TypeError):
      self.opt = torch.optim.AdamW(groups, foreach=True, **kwargs)
      self.optimizer = "AdamW(foreach=True)"
    self.images = torch.from_numpy(host_batch["image"])
    self.act = torch.from_numpy(host_batch["activity_id"].astype(np.int64))
    self.tokens = torch.from_numpy(np.asarray(tokens, np.int64))
    self.mean = torch.tensor(models.CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    self.std = torch.tensor(models.CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    self.clip_norm = oc.grad_clip_norm
    self.max_scale = config.model.logit_scale_max
    self.last_loss = float("nan")

  def _features(self, out):
    return out.pooler_output if hasattr(out, "pooler_output") else out

  def step(self) -> None:
    torch = self.torch
    f = torch.nn.functional
    x = self.images.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - self.mean) / self.std
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
      zi = self._features(self.model.get_image_features(pixel_values=x))
      zt = self._features(self.model.get_text_features(input_ids=self.tokens))
    zi, zt = f.normalize(zi.float(), dim=-1), f.normalize(zt.float(), dim=-1)
    zt = zt[self.act]
    logits = self.model.logit_scale.clamp(max=self.max_scale).exp() * zi @ zt.T
    labels = torch.arange(logits.shape[0])
    loss = 0.5 * (f.cross_entropy(logits, labels) + f.cross_entropy(logits.T, labels))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip_norm:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.opt.step()
    with torch.no_grad():
      self.model.logit_scale.clamp_(max=self.max_scale)
    self.last_loss = float(loss.detach())

  def run(self, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
      self.step()
    if not math.isfinite(self.last_loss):
      raise FloatingPointError(f"torch step gave loss {self.last_loss}")
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------
# The reference matmul.
# ------------------------------------------------------------------------------------------


class Matmul:
  """A jitted [n, n] @ [n, n] in fp32, or bf16 x bf16 accumulated in fp32 (how our bf16 layers
  multiply); `run(reps)` returns seconds for `reps` products."""

  def __init__(self, n: int = 2048, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.key(0))
    self.a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    self.b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    self.name = jnp.dtype(dtype).name
    dot = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
    self.compiled = jax.jit(dot).lower(self.a, self.b).compile()
    self.flops = 2.0 * n**3
    self.xla_flops = xla_flops(self.compiled)
    self.run(1)

  def run(self, reps: int) -> float:
    t0 = time.perf_counter()
    out = None
    for _ in range(reps):
      out = self.compiled(self.a, self.b)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------
# Main.
# ------------------------------------------------------------------------------------------


def bench_variant(variant: str, args: argparse.Namespace, matmuls: dict) -> dict[str, Any]:
  """Times our step and torch's at fp32 and at each side's best precision (ours bf16, torch
  autocast bf16), plus the fp32 and bf16 matmuls, in alternating rounds; prints a summary."""
  texts = list(prompts.activities("bp4d").values())
  configs = {p: bench_config(variant, args.image_size, args.batch_size, dtype=p) for p in PRECS}
  mc = configs["float32"].model
  host = random_batch(args.batch_size, mc.image_size, len(texts))
  steppers, compile_s = {}, {}
  for p in PRECS:
    t0 = time.perf_counter()
    steppers[f"ours {p}"] = OurStep(configs[p], texts, host)
    compile_s[p] = time.perf_counter() - t0
  tokens = steppers["ours float32"].tokens
  for p in PRECS:
    steppers[f"torch {p}"] = TorchStep(configs[p], tokens, host, bf16=p == "bfloat16")
  warm = {k: v.run(args.warmup) for k, v in steppers.items()}
  print(
    f"\n== {variant} at {mc.image_size} px, batch {args.batch_size} "
    f"(vision {mc.vision_width}x{mc.vision_layers}/{mc.vision_heads}h patch {mc.patch_size}, "
    f"text {mc.text_width}x{mc.text_layers}/{mc.text_heads}h ctx {mc.context_length}, "
    f"vocab {mc.vocab_size}, {mc.act}); {len(texts)} activity texts; "
    f"torch {steppers['torch float32'].optimizer}, bf16 = torch.autocast('cpu', bfloat16)"
  )
  print(
    "   compile "
    + ", ".join(f"ours {p} {t:.1f} s" for p, t in compile_s.items())
    + "; warm-up "
    + ", ".join(f"{k} {t:.2f} s" for k, t in warm.items())
  )
  ips: dict[str, list[float]] = {k: [] for k in steppers}
  fps: dict[str, list[float]] = {k: [] for k in matmuls}
  for r in range(args.repeats):
    runs = [*steppers.items(), *((f"matmul {k}", m) for k, m in matmuls.items())]
    if r % 2:
      runs.reverse()
    line = []
    for name, obj in runs:
      if name.startswith("matmul "):
        k = name.split(" ", 1)[1]
        fps[k].append(obj.flops * args.matmul_reps / obj.run(args.matmul_reps))
      else:
        ips[name].append(args.batch_size * args.steps / obj.run(args.steps))
    for k in steppers:
      line.append(f"{k} {ips[k][-1]:7.2f}")
    line += [f"matmul {k} {fps[k][-1] / 1e9:6.1f} GFLOP/s" for k in matmuls]
    print(f"   round {r + 1}: " + " | ".join(line) + f" | load {os.getloadavg()[0]:.2f}")
  med = {k: statistics.median(v) for k, v in ips.items()}
  mm = {k: statistics.median(v) for k, v in fps.items()}
  out = dict(variant=variant, **{k: v for k, v in med.items()})
  for p in PRECS:
    ratio = med[f"ours {p}"] / med[f"torch {p}"]
    out[f"ratio {p}"] = ratio
    flops = steppers[f"ours {p}"].flops
    achieved = flops * med[f"ours {p}"] / args.batch_size
    out[f"share {p}"] = achieved / mm[p]
    print(
      f"   {p}: ours {med[f'ours {p}']:.2f} img/s, torch {med[f'torch {p}']:.2f} img/s -> "
      f"ours/torch = {ratio:.2f}x; step {flops / 1e9:.1f} GFLOP (XLA), achieved "
      f"{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / mm[p]:.0f}% of the {p} matmul "
      f"({mm[p] / 1e9:.1f} GFLOP/s)"
    )
  best = med["ours bfloat16"] / max(med["torch float32"], med["torch bfloat16"])
  out["ratio best"] = best
  print(
    f"   best precision each side: ours bf16 / torch's faster = {best:.2f}x "
    f"(target >= 1.5x: {'met' if best >= 1.5 else 'MISSED'}); fp32: "
    f"{out['ratio float32']:.2f}x (target >= 1.0x: "
    f"{'met' if out['ratio float32'] >= 1.0 else 'MISSED'})"
  )
  return out


PRECS = ("float32", "bfloat16")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--variants",
    default="tiny,default,S/16",
    help="comma-separated model variants ('default': the default job's model at 64 px)",
  )
  p.add_argument("--image_size", type=int, default=112)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--steps", type=int, default=0, help="timed steps per round (0: per variant)")
  p.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  p.add_argument("--matmul_size", type=int, default=2048)
  p.add_argument("--matmul_reps", type=int, default=5)
  p.add_argument("--quick", action="store_true", help="1 step per round, 2 rounds")
  p.add_argument(
    "--cache_dir",
    default=default_cache_dir(),
    help="JAX persistent compilation cache ('' for none): reruns skip compiling",
  )
  args = p.parse_args(argv)
  if args.quick:
    args.repeats = min(args.repeats, 2)
    args.matmul_reps = 3
  return args


def default_cache_dir() -> str:
  return os.path.join(tempfile.gettempdir(), "clef_jax_bench_cache")


def use_compilation_cache(path: str) -> None:
  """Turns on JAX's persistent compilation cache in `path` (no-op for '')."""
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv=None) -> None:
  args = parse_args(argv)
  use_compilation_cache(args.cache_dir)
  print(f"machine: {machine_line()}")
  print(f"command: {' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}")
  matmuls = {p: Matmul(args.matmul_size, jnp.dtype(p)) for p in PRECS}
  results = []
  explicit_steps = args.steps
  for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
    default_steps = {"tiny": 5, "default": 4}.get(variant, 2)
    args.steps = explicit_steps or (1 if args.quick else default_steps)
    results.append(bench_variant(variant, args, matmuls))
  print("\nsummary (median images/s; ours/torch at fp32 and at each side's best precision):")
  for r in results:
    print(
      f"  {r['variant']:>7}: fp32 ours {r['ours float32']:8.2f} torch {r['torch float32']:8.2f} "
      f"({r['ratio float32']:4.2f}x) | bf16 ours {r['ours bfloat16']:8.2f} torch "
      f"{r['torch bfloat16']:8.2f} ({r['ratio bfloat16']:4.2f}x) | best-vs-best "
      f"{r['ratio best']:4.2f}x | FLOP share fp32 {100 * r['share float32']:3.0f}% "
      f"bf16 {100 * r['share bfloat16']:3.0f}%"
    )
  print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
