"""IRED's MLP energy model E(inp, y, t) and its score dE/dy.

Architecture (hidden 512, time embedding 128), as in the original ``EBM``:
  temb = Dense(GELU(Dense(sinusoidal(t))))                      (128)
  (g2, b2), (g3, b3) = halves of t_map_fc2(temb), t_map_fc3(temb)
  h1 = swish(fc1([inp, y]))
  h2 = swish(fc2(h1) * (1 + g2) + b2);  h3 = swish(fc3(h2) * (1 + g3) + b3)
  E  = sum(fc4(h3) ** 2, axis=-1, keepdims=True)                 (B, 1)

The time path depends on t only. With ``num_timesteps`` set, it is computed
once for each of the T timesteps and gathered per sample (about 20 % of an
energy evaluation's FLOPs saved); the values are those of the per-sample path.
Parameters use PyTorch's default init (uniform +-1/sqrt(fan_in) for kernels
and biases), so training starts where the PyTorch runs start.
Every product goes through ``matmul.matmul_for(matmul_dtype)``; the cheaper
score of the last layer is ``gram.gram_square_norm``, taken as ``last_layer`` says
(``uses_gram``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ired_cd import gram as gram_lib
from ired_cd.matmul import MATMUL_DTYPES  # noqa: F401  (schema.py reads model.MATMUL_DTYPES)
from ired_cd.matmul import f32_matmul, matmul_for

# How a score differentiates the last layer: gram (through W W^T, gram.gram_square_norm),
# plain (through W), or auto (gram where gram.pays says it needs fewer multiply-adds).
LAST_LAYERS = ("auto", "gram", "plain")


def sinusoidal_embedding(t, dim: int = 128):
  """[sin(t f_k), cos(t f_k)], f_k = exp(-log(10000) k / (dim/2 - 1)).  (B,) -> (B, dim)."""
  half = dim // 2
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
  angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def swish(x):
  return x * jax.nn.sigmoid(x)


def _dense_dot_general(matmul, lhs, rhs, dimension_numbers, precision=None,
                       preferred_element_type=None):
  """``nn.Dense``'s dot_general through ``matmul`` (2-D inputs, Dense's default precision)."""
  del precision, preferred_element_type
  if dimension_numbers != (((1,), (0,)), ((), ())):
    raise ValueError(f"Dense through matmul_for() takes (B, in) inputs, got {dimension_numbers}")
  return matmul(lhs, rhs)


class SplitInputDense(nn.Module):
  """Dense over concat([a, b]) whose two halves can be applied apart.

  One kernel [in_a + in_b, features] (named like a plain Dense, so checkpoints
  and the golden weights load unchanged): dense(concat(a, b)) = project_a(a) +
  project_b(b), where project_a carries the bias.
  """

  in_a: int
  in_b: int
  features: int
  matmul: Callable = f32_matmul

  def setup(self):
    self.kernel = self.param(
        "kernel", nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        (self.in_a + self.in_b, self.features))
    self.bias = self.param("bias", nn.initializers.zeros, (self.features,))

  def project_a(self, a):
    return self.matmul(a, self.kernel[:self.in_a]) + self.bias

  def project_b(self, b):
    return self.matmul(b, self.kernel[self.in_a:])


class EnergyMLP(nn.Module):
  """E(inp, y, t) -> (B, 1).  inp: (B, inp_dim), y: (B, out_dim), t: int (B,).

  Split in two for the samplers: ``condition(inp, t)`` is everything that
  does not depend on y (fc1's input half, the FiLM gains and biases), and
  ``energy_given(cond, y)`` the rest, so a chain of moves in y computes the
  former once. ``inp_dim`` defaults to ``out_dim``. ``matmul_dtype``: one of
  ``MATMUL_DTYPES``, the dtype of every product's operands (``matmul.matmul_for``).
  ``last_layer``: one of ``LAST_LAYERS``, the form a score's last layer takes
  (``uses_gram``; the energy is the same).
  """

  out_dim: int
  hidden: int = 512
  emb_dim: int = 128
  num_timesteps: Optional[int] = None
  inp_dim: Optional[int] = None
  matmul_dtype: str = "float32"
  last_layer: str = "auto"

  def setup(self):
    self.matmul = matmul_for(self.matmul_dtype)
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n, name=name, dot_general=functools.partial(_dense_dot_general, self.matmul),
        kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=nn.initializers.zeros)
    self.time_fc1 = dense(self.emb_dim, "time_fc1")
    self.time_fc2 = dense(self.emb_dim, "time_fc2")
    self.fc1 = SplitInputDense(self.inp_dim or self.out_dim, self.out_dim, self.hidden,
                               self.matmul, name="fc1")
    self.fc2 = dense(self.hidden, "fc2")
    self.fc3 = dense(self.hidden, "fc3")
    self.fc4 = dense(self.out_dim, "fc4")
    self.t_map_fc2 = dense(2 * self.hidden, "t_map_fc2")
    self.t_map_fc3 = dense(2 * self.hidden, "t_map_fc3")

  def time_embedding(self, t):
    """(B,) int -> (B, emb_dim)."""
    x = self.time_fc1(sinusoidal_embedding(t, self.emb_dim))
    return self.time_fc2(jax.nn.gelu(x, approximate=False))

  def film(self, t):
    """FiLM gains and biases (g2, b2, g3, b3), each (B, hidden)."""
    if self.num_timesteps is not None:
      table = self._film_per_sample(jnp.arange(self.num_timesteps))
      return tuple(part[t] for part in table)
    return self._film_per_sample(t)

  def _film_per_sample(self, t):
    temb = self.time_embedding(t)
    g2, b2 = jnp.split(self.t_map_fc2(temb), 2, axis=-1)
    g3, b3 = jnp.split(self.t_map_fc3(temb), 2, axis=-1)
    return g2, b2, g3, b3

  def condition(self, inp, t):
    """The y-independent part: (fc1(inp half) + bias, g2, b2, g3, b3), each (B, hidden)."""
    return (self.fc1.project_a(inp),) + self.film(t)

  def energy_given(self, cond, y, gram: bool = False):
    """E from ``condition``'s output and y (B, out_dim) -> (B, 1).

    ``gram``: the last layer as ``gram.gram_square_norm`` (same value, cheaper
    dE/dy for large batches; see ``uses_gram``).
    """
    h_inp, g2, b2, g3, b3 = cond
    h = swish(h_inp + self.fc1.project_b(y))
    h = swish(self.fc2(h) * (1.0 + g2) + b2)
    h = swish(self.fc3(h) * (1.0 + g3) + b3)
    if gram:
      fc4 = self.fc4.variables["params"]
      return gram_lib.gram_square_norm(h, fc4["kernel"], fc4["bias"], self.matmul)[:, None]
    return jnp.sum(jnp.square(self.fc4(h)), axis=-1, keepdims=True)

  def __call__(self, inp, y, t):
    return self.energy_given(self.condition(inp, t), y)


@dataclasses.dataclass(frozen=True)
class EnergyFunction:
  """Pure-function view of an energy module (EnergyMLP, composed.ClauseEnergy, EdgeEnergy).

  ``energy(params, inp, y, t)`` -> (B, 1); ``condition(params, inp, t)`` and
  ``energy_given(params, cond, y)`` split it at the y-independent part.
  ``calls_per_params``: how many score calls share one set of parameters (a
  chain's or the sampler's steps; ``sharing`` sets it), so that ``uses_gram``
  (with ``last_layer='auto'``) counts the Gram product W W^T once for all of them.
  """

  module: EnergyMLP
  calls_per_params: int = 1

  def sharing(self, calls: int) -> "EnergyFunction":
    """This energy inside a loop of ``calls`` score calls on the same parameters."""
    return dataclasses.replace(self, calls_per_params=calls)

  def __call__(self, params, inp, y, t):
    return self.module.apply({"params": params}, inp, y, t)

  def condition(self, params, inp, t):
    return self.module.apply({"params": params}, inp, t, method="condition")

  def energy_given(self, params, cond, y, gram: bool = False):
    return self.module.apply({"params": params}, cond, y, gram, method="energy_given")


def init_params(model: EnergyMLP, key):
  """Parameters with torch.nn.Linear's default init (biases +-1/sqrt(fan_in))."""
  inp_dim = model.inp_dim or model.out_dim
  params = model.init(key, jnp.zeros((1, inp_dim)), jnp.zeros((1, model.out_dim)),
                      jnp.zeros((1,), jnp.int32))["params"]
  keys = jax.random.split(jax.random.fold_in(key, 1), len(params))
  out = {}
  for k, (name, layer) in zip(keys, sorted(params.items())):
    fan_in = layer["kernel"].shape[0]
    bound = 1.0 / math.sqrt(fan_in)
    out[name] = dict(kernel=layer["kernel"],
                     bias=jax.random.uniform(k, layer["bias"].shape, jnp.float32, -bound, bound))
  return out


def energy_and_score(energy_fn: EnergyFunction, params, inp, y, t):
  """(E (B,), dE/dy (B, D)): ``conditioned_energy_and_score`` from (inp, t)."""
  return conditioned_energy_and_score(energy_fn, params, energy_fn.condition(params, inp, t), y)


def uses_gram(energy_fn: EnergyFunction, batch: int) -> bool:
  """Whether a score of ``batch`` rows takes the Gram last layer (static): the module's
  ``last_layer``; for ``auto``, ``gram.pays`` with the calls that share the parameters."""
  module = energy_fn.module
  if module.last_layer == "auto":
    return gram_lib.pays(batch, module.hidden, module.out_dim, energy_fn.calls_per_params)
  return module.last_layer == "gram"


def conditioned_energy_and_score(energy_fn: EnergyFunction, params, cond, y):
  """(E (B,), dE/dy (B, D)): ``jax.value_and_grad`` of the summed energy given ``cond``.

  Summing is exact per sample: each E_i depends on y_i only, so a sample's score
  does not depend on the batch it sits in (no division by the batch size).
  """
  gram = uses_gram(energy_fn, y.shape[0])

  def total(y_):
    e = energy_fn.energy_given(params, cond, y_, gram)[:, 0]
    return jnp.sum(e), e
  (_, energy), score_ = jax.value_and_grad(total, has_aux=True)(y)
  return energy, score_


def conditioned_score(energy_fn: EnergyFunction, params, cond, y):
  """dE/dy (B, D) given ``cond``; differentiable w.r.t. params (the denoiser's output)."""
  return conditioned_energy_and_score(energy_fn, params, cond, y)[1]


def score(energy_fn: EnergyFunction, params, inp, y, t):
  """dE/dy (B, D) from (inp, t)."""
  return conditioned_score(energy_fn, params, energy_fn.condition(params, inp, t), y)
