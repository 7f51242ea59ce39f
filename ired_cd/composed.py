"""Composed energies. For 3-SAT: one learned energy per clause, summed over the formula's
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

``EdgeEnergy`` composes graph colouring the same way, one learned energy per edge (Oarga & Du:
from the two nodes' colours):

  E(inp, y, t) = sum over edges (i, j) of <h(y_i, t), h(y_j, t)>^2

y_i a node's k colour values and h a residual MLP of the same form with EDGE_FEATURES outputs;
each node's score averages its edges. The inner product of two one-hots, squared, is the ideal
edge energy (1 where the colours agree), so the form holds it; the MLP runs once per node, not
once per edge, and the edges' products are one batched matrix product masked by the adjacency.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ired_cd.matmul import matmul_for
from ired_cd.model import _dense_dot_general, sinusoidal_embedding, swish

CLAUSE_WIDTH = 3  # literals a clause's energy reads
EDGE_FEATURES = 16  # h's outputs: the rank of an edge's learned energy


def _averaged(y, share):
  """y with its value but the gradient ``share`` (broadcast over y's trailing axes)."""
  return y * share + jax.lax.stop_gradient(y - y * share)


class _PartEnergy(nn.Module):
  """The learned energy of one part (a clause, a node's side of an edge), applied to every
  part at once: a residual MLP of ``hidden`` width whose first layer adds the time
  embedding, with ``part_outputs`` outputs. Subclasses set the parts and sum them."""

  out_dim: int
  inp_dim: Optional[int] = None
  hidden: int = 128
  emb_dim: int = 128
  num_timesteps: Optional[int] = None  # unused: the time path is per sample
  matmul_dtype: str = "float32"
  last_layer: str = "plain"  # no Gram form (model.uses_gram reads it)
  part_outputs = 1

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
    self.fc_out = dense(self.part_outputs, "fc_out")

  def _time(self, t):
    """The time embedding (B, hidden)."""
    return self.time_fc2(jax.nn.gelu(self.time_fc1(sinusoidal_embedding(t, self.emb_dim)),
                                     approximate=False))

  def _parts(self, features, temb):
    """The MLP on every part: features (B, P, F), temb (B, hidden) -> (B, P, part_outputs)."""
    batch, parts, _ = features.shape
    h = swish(self.fc_in(features.reshape(batch * parts, -1)) + jnp.repeat(temb, parts, axis=0))
    for inner, outer in self.blocks:
      h = h + outer(swish(inner(h)))
    return self.fc_out(swish(h)).reshape(batch, parts, self.part_outputs)

  def energy_given(self, cond, y, gram: bool = False):
    """E (B, 1) from ``condition``'s output and y (B, out_dim); ``gram`` is not supported."""
    if gram:
      raise ValueError(f"{type(self).__name__} has no Gram form of its last layer "
                       "(last_layer='plain')")
    return self.summed(cond, y)

  def __call__(self, inp, y, t):
    return self.energy_given(self.condition(inp, t), y)


class ClauseEnergy(_PartEnergy):
  """E(inp, y, t) -> (B, 1).  inp: (B, m n) clause matrices, y: (B, n), t: int (B,)."""

  def condition(self, inp, t):
    """The y-independent part: (variables (B, m, 3) int32, signs (B, m, 3), present (B, m),
    per-variable 1 / clause count (B, n), time embedding (B, hidden))."""
    clauses = inp.reshape(inp.shape[0], -1, self.out_dim)
    _, variables = jax.lax.top_k(jnp.abs(clauses), CLAUSE_WIDTH)  # the literals, in order
    signs = jnp.take_along_axis(clauses, variables, axis=-1)
    present = jnp.any(clauses != 0, axis=-1).astype(jnp.float32)
    share = 1.0 / jnp.maximum(jnp.sum(jnp.abs(clauses), axis=1), 1.0)
    return variables, signs, present, share, self._time(t)

  def clause_values(self, cond, y):
    """f per clause, (B, m), from ``condition``'s output and y (B, n)."""
    variables, signs, _, share, temb = cond
    literal = jnp.take_along_axis(_averaged(y, share)[:, None, :], variables, axis=-1) * signs
    return self._parts(jnp.concatenate([literal, signs], axis=-1), temb)[..., 0]

  def summed(self, cond, y):
    """E (B, 1): the clauses' f squared, summed over the present ones."""
    return jnp.sum(cond[2] * jnp.square(self.clause_values(cond, y)), axis=-1, keepdims=True)


class EdgeEnergy(_PartEnergy):
  """E(inp, y, t) -> (B, 1).  inp: (B, n n) adjacency matrices, y: (B, n k) colour values,
  t: int (B,)."""

  part_outputs = EDGE_FEATURES

  def condition(self, inp, t):
    """The y-independent part: (adjacency (B, n, n), per-node 1 / degree (B, n, 1), time
    embedding (B, hidden))."""
    nodes = math.isqrt(inp.shape[-1])
    adjacency = inp.reshape(inp.shape[0], nodes, nodes)
    share = 1.0 / jnp.maximum(jnp.sum(adjacency, axis=-1, keepdims=True), 1.0)
    return adjacency, share, self._time(t)

  def node_features(self, cond, y):
    """h per node, (B, n, EDGE_FEATURES), from ``condition``'s output and y (B, n k)."""
    adjacency, share, temb = cond
    colours = y.reshape(y.shape[0], adjacency.shape[1], -1)
    return self._parts(_averaged(colours, share), temb)

  def summed(self, cond, y):
    """E (B, 1): <h_i, h_j>^2 summed over the edges (each once)."""
    h = self.node_features(cond, y)
    products = jnp.einsum("bif,bjf->bij", h, h)
    return 0.5 * jnp.sum(cond[0] * jnp.square(products), axis=(1, 2))[:, None]
