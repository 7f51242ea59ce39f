"""A composed energy for 3-SAT: one learned energy per clause, summed over the formula's
clauses (the form of Oarga & Du 2025), so its parameters do not depend on the formula's size.

  E(inp, y, t) = sum over present clauses c of f(s_1 y_1, s_2 y_2, s_3 y_3, s_1, s_2, s_3, t)^2

where y_k is the value of the clause's k-th variable (in variable order), s_k its sign (0 for
a missing literal of a shorter clause), and f a residual MLP (``hidden`` wide, two residual
blocks, SiLU) whose first layer adds the time embedding. The square keeps each clause's
energy >= 0, as IRED's EBM squares its output.

Each variable's score averages its clauses (Oarga & Du): in E, y_i carries its value but a
gradient 1 / (the number of clauses holding i), so dE/dy is the gradient preconditioned by a
positive diagonal: it still points downhill in E, and its scale does not grow with the
clause-to-variable ratio.

The input is the task's clause matrix (sat.encode: max_clauses x variables, flat);
``condition`` reads the clauses' variables and signs once per (inp, t). ``out_dim`` (the
variables) and ``inp_dim`` shape the arrays only: one set of parameters serves every size.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ired_cd.matmul import matmul_for
from ired_cd.model import _dense_dot_general, sinusoidal_embedding, swish

CLAUSE_WIDTH = 3  # literals a clause's energy reads


class ClauseEnergy(nn.Module):
  """E(inp, y, t) -> (B, 1).  inp: (B, m n) clause matrices, y: (B, n), t: int (B,)."""

  out_dim: int
  inp_dim: Optional[int] = None
  hidden: int = 128
  emb_dim: int = 128
  num_timesteps: Optional[int] = None  # unused: the time path is per sample
  matmul_dtype: str = "float32"
  last_layer: str = "plain"  # no Gram form (model.uses_gram reads it)

  def setup(self):
    matmul = matmul_for(self.matmul_dtype)
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n, name=name, dot_general=functools.partial(_dense_dot_general, matmul),
        kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=nn.initializers.zeros)
    self.time_fc1 = dense(self.emb_dim, "time_fc1")
    self.time_fc2 = dense(self.hidden, "time_fc2")
    self.fc_in = dense(self.hidden, "fc_in")
    self.blocks = [(dense(self.hidden, f"block{k}_a"), dense(self.hidden, f"block{k}_b"))
                   for k in range(2)]
    self.fc_out = dense(1, "fc_out")

  def condition(self, inp, t):
    """The y-independent part: (variables (B, m, 3) int32, signs (B, m, 3), present (B, m),
    per-variable 1 / clause count (B, n), time embedding (B, hidden))."""
    clauses = inp.reshape(inp.shape[0], -1, self.out_dim)
    _, variables = jax.lax.top_k(jnp.abs(clauses), CLAUSE_WIDTH)  # the literals, in order
    signs = jnp.take_along_axis(clauses, variables, axis=-1)
    present = jnp.any(clauses != 0, axis=-1).astype(jnp.float32)
    share = 1.0 / jnp.maximum(jnp.sum(jnp.abs(clauses), axis=1), 1.0)
    temb = self.time_fc2(jax.nn.gelu(self.time_fc1(sinusoidal_embedding(t, self.emb_dim)),
                                     approximate=False))
    return variables, signs, present, share, temb

  def clause_values(self, cond, y):
    """f per clause, (B, m), from ``condition``'s output and y (B, n)."""
    variables, signs, _, share, temb = cond
    averaged = y * share + jax.lax.stop_gradient(y - y * share)  # value y, gradient share
    literal = jnp.take_along_axis(averaged[:, None, :], variables, axis=-1) * signs
    batch, clauses, _ = literal.shape
    features = jnp.concatenate([literal, signs], axis=-1).reshape(batch * clauses, -1)
    h = swish(self.fc_in(features) + jnp.repeat(temb, clauses, axis=0))
    for inner, outer in self.blocks:
      h = h + outer(swish(inner(h)))
    return self.fc_out(swish(h)).reshape(batch, clauses)

  def energy_given(self, cond, y, gram: bool = False):
    """E (B, 1) from ``condition``'s output and y (B, n); ``gram`` is not supported."""
    if gram:
      raise ValueError("ClauseEnergy has no Gram form of its last layer (last_layer='plain')")
    present = cond[2]
    return jnp.sum(present * jnp.square(self.clause_values(cond, y)), axis=-1, keepdims=True)

  def __call__(self, inp, y, t):
    return self.energy_given(self.condition(inp, t), y)
