"""Analytic matmul FLOP count of a jitted function, read off its jaxpr.

Every ``dot_general`` counts 2 * (batch dims) * M * N * K FLOPs; a ``scan``
multiplies its body by its length, a ``while`` loop by ``while_trip_count``
(traced trip counts, e.g. the sampler's inner steps, are not in the jaxpr), a
``cond`` takes its most expensive branch. Elementwise work is not counted.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jax_core

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
