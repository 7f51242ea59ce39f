"""FLOP counts of the train step and the sampler (the benchmark's), read off the jaxpr.

Every ``dot_general`` counts 2 * (batch dims) * M * N * K FLOPs; a ``scan``
multiplies its body by its length, a ``while`` loop by ``while_trip_count``
(traced trip counts, e.g. the sampler's inner steps, are not in the jaxpr), a
``cond`` takes its most expensive branch. Elementwise work is not counted.
``xla_flops`` is XLA's own estimate for a compiled program, for comparison.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from ired_cd import sampler, train

DCE_SYMBOL = "jax.interpreters.partial_eval.dce_jaxpr"


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (lhs_contract, rhs_contract), (lhs_batch, _) = eqn.params["dimension_numbers"]
  contract = math.prod(lhs[d] for d in lhs_contract)
  batch = math.prod(lhs[d] for d in lhs_batch)
  lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in lhs_contract and d not in lhs_batch)
  rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in rhs_contract
                       and d not in eqn.params["dimension_numbers"][1][1])
  return 2 * batch * lhs_free * rhs_free * contract


def _sub_jaxprs(value):
  if isinstance(value, jax_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def eliminate_dead_code(jaxpr):
  """``jaxpr`` without the equations its outputs do not need (JAX's own pass, the one jit uses).

  JAX's public API has no dead-code elimination; ``DCE_SYMBOL`` is exported
  outside ``jax._src`` but not covered by JAX's compatibility policy, so this is
  the one place that reaches for it, and it says so when a JAX release drops it.
  """
  try:
    from jax.interpreters.partial_eval import dce_jaxpr
  except ImportError as err:
    raise ImportError(
        f"ired_cd.flops needs {DCE_SYMBOL} (JAX's dead-code elimination of a jaxpr), which "
        f"jax {jax.__version__} does not export: find its new home and update "
        "flops.eliminate_dead_code") from err
  return dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]


def jaxpr_flops(jaxpr, while_trip_count: int = 1) -> int:
  """Matmul FLOPs of ``jaxpr``'s live equations, sub-jaxprs included.

  Each (sub-)jaxpr is dead-code eliminated first, as XLA does: a ``custom_vjp``
  backward traced into a score also computes parameter cotangents that nothing
  uses (gram.gram_square_norm), and JAX's own DCE does not enter ``while``
  bodies.
  """
  jaxpr = eliminate_dead_code(jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr, while_trip_count)
    elif name == "while":
      body = jaxpr_flops(eqn.params["body_jaxpr"].jaxpr, while_trip_count)
      total += while_trip_count * body
    elif name == "cond":
      total += max(jaxpr_flops(b.jaxpr, while_trip_count) for b in eqn.params["branches"])
    else:
      for value in eqn.params.values():
        for sub in _sub_jaxprs(value):
          total += jaxpr_flops(sub, while_trip_count)
  return total


def count_matmul_flops(fn, *args, while_trip_count: int = 1) -> int:
  """Matmul FLOPs of one call of ``fn(*args)`` that XLA keeps (``jaxpr_flops``)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr, while_trip_count)


def train_step_flops(setup, state, mesh=None, data=None) -> int:
  """Matmul FLOPs of one train step of ``setup`` from ``state`` (train.make_train_step) on the
  task's ``data`` (or its shapes)."""
  return count_matmul_flops(train.make_train_step(setup, mesh), state, data)


def sampler_flops(setup, params, inp, inner_steps: int) -> int:
  """Matmul FLOPs of one sampler call with ``inner_steps`` descent steps per timestep.

  The descent runs inner_steps - 1 value_and_grad steps, then one forward. With
  a traced count the jaxpr keeps the descent branch of its ``cond`` even for 0
  steps, so 0 is counted on the program traced with a static 0 (no descent).
  """
  steps = 0 if inner_steps == 0 else jnp.int32(inner_steps)
  y_init = jnp.zeros((inp.shape[0], setup.task.out_dim), jnp.float32)
  return count_matmul_flops(
      lambda p, x, y: sampler.ired_sample(setup.energy_fn, p, x, y, setup.schedule, steps),
      params, inp, y_init, while_trip_count=max(inner_steps - 1, 0))


def xla_flops(compiled) -> float:
  """XLA's FLOP estimate of a compiled program (its cost analysis; NaN without one)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")
