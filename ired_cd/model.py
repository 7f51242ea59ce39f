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
``matmul_dtype="bfloat16"`` runs every product (and every derivative of one)
on bfloat16 operands with float32 accumulation; parameters, activations and
all other arithmetic stay float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


MATMUL_DTYPES = ("float32", "bfloat16")


def sinusoidal_embedding(t, dim: int = 128):
  """[sin(t f_k), cos(t f_k)], f_k = exp(-log(10000) k / (dim/2 - 1)).  (B,) -> (B, dim)."""
  half = dim // 2
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
  angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def swish(x):
  return x * jax.nn.sigmoid(x)


def f32_matmul(a, b, transpose_a: bool = False, transpose_b: bool = False):
  """op(a) @ op(b) in float32, op transposing where asked: plain XLA products."""
  return jnp.matmul(a.T if transpose_a else a, b.T if transpose_b else b)


def _row_major_transpose(x):
  """x.T copied to row-major memory: a copy XLA cannot fold back into the product.

  XLA:CPU runs a bfloat16 product at the bfloat16 rate only on row-major,
  untransposed operands; it computes g W^T and x^T g in float32 otherwise (about
  1.8x slower at the layer size, ``bench --what=matmul``'s layouts). A flat array
  has no transposed layout, so the barrier pins the copy.
  """
  t = x.T
  return jax.lax.optimization_barrier(t.reshape(-1)).reshape(t.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def bf16_matmul(a, b, transpose_a: bool = False, transpose_b: bool = False):
  """op(a) @ op(b) on bfloat16 operands with float32 accumulation and result.

  ``transpose_a``/``transpose_b``: op transposes that operand (copied to row-major
  bfloat16 first). The derivatives are ``bf16_matmul`` products again, to any
  order, so a score and the gradient of a score keep the bfloat16 speed (plain
  autodiff of a cast would multiply float32 cotangents by bfloat16 operands, at
  float32 speed). Operands and cotangents stay float32 outside the products.
  """
  a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  if transpose_a:
    a = _row_major_transpose(a)
  if transpose_b:
    b = _row_major_transpose(b)
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _bf16_matmul_forward(a, b, transpose_a, transpose_b):
  # The product goes through the custom rule again: a higher-order derivative
  # differentiates this function as plain code.
  return bf16_matmul(a, b, transpose_a, transpose_b), (a, b)


def _bf16_matmul_backward(transpose_a, transpose_b, residuals, g):
  # C = op(A) op(B): d op(A) = G op(B)^T and d op(B) = op(A)^T G, transposed back
  # where op transposes.
  a, b = residuals
  if transpose_a:
    grad_a = bf16_matmul(b, g, transpose_b, True)
  else:
    grad_a = bf16_matmul(g, b, False, not transpose_b)
  if transpose_b:
    grad_b = bf16_matmul(g, a, True, transpose_a)
  else:
    grad_b = bf16_matmul(a, g, not transpose_a, False)
  return grad_a, grad_b


bf16_matmul.defvjp(_bf16_matmul_forward, _bf16_matmul_backward)


def matmul_for(matmul_dtype: str) -> Callable:
  """The product ``(a, b, transpose_a=False, transpose_b=False) -> op(a) @ op(b)`` the
  model uses for ``matmul_dtype`` (one of ``MATMUL_DTYPES``)."""
  if matmul_dtype not in MATMUL_DTYPES:
    raise ValueError(f"matmul_dtype={matmul_dtype!r}; allowed: {MATMUL_DTYPES}")
  return bf16_matmul if matmul_dtype == "bfloat16" else f32_matmul


def _dense_dot_general(matmul, lhs, rhs, dimension_numbers, precision=None,
                       preferred_element_type=None):
  """``nn.Dense``'s dot_general through ``matmul`` (2-D inputs, Dense's default precision)."""
  del precision, preferred_element_type
  if dimension_numbers != (((1,), (0,)), ((), ())):
    raise ValueError(f"Dense through matmul_for() takes (B, in) inputs, got {dimension_numbers}")
  return matmul(lhs, rhs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gram_square_norm(h, w, b, matmul=f32_matmul):
  """|h W + b|^2 per row, (B, hidden) -> (B,), differentiated through W W^T.

  The gradient w.r.t. h is 2 (h W W^T + W b): one hidden x hidden product in
  place of h W and its transpose (2 x hidden x out). The parameter cotangents
  need z = h W + b; XLA drops them where only dE/dh is used (a score). Any
  order of reverse-mode differentiation works (the denoising loss takes the
  gradient of this gradient w.r.t. the parameters). ``matmul``: the product
  used (``matmul_for``).
  """
  return _gram_forward(h, w, b, matmul)[0]


def _gram_forward(h, w, b, matmul):
  c = w @ b
  u_plus_c = matmul(h, matmul(w, w, transpose_b=True)) + c
  return jnp.sum(h * (u_plus_c + c), axis=-1) + jnp.sum(jnp.square(b)), (h, w, b, u_plus_c)


def _gram_backward(matmul, residuals, g):
  h, w, b, u_plus_c = residuals
  gz = 2.0 * g[:, None] * (matmul(h, w) + b)
  return 2.0 * g[:, None] * u_plus_c, matmul(h, gz, transpose_a=True), jnp.sum(gz, axis=0)


gram_square_norm.defvjp(_gram_forward, _gram_backward)


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

  Split in two for the samplers: ``conditioning(inp, t)`` is everything that
  does not depend on y (fc1's input half, the FiLM gains and biases), and
  ``energy_given(cond, y)`` the rest, so a chain of moves in y computes the
  former once. ``inp_dim`` defaults to ``out_dim``. ``matmul_dtype``: one of
  ``MATMUL_DTYPES``, the dtype of every product's operands (``bf16_matmul``).
  """

  out_dim: int
  hidden: int = 512
  emb_dim: int = 128
  num_timesteps: Optional[int] = None
  inp_dim: Optional[int] = None
  matmul_dtype: str = "float32"

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

  def conditioning(self, inp, t):
    """The y-independent part: (fc1(inp half) + bias, g2, b2, g3, b3), each (B, hidden)."""
    return (self.fc1.project_a(inp),) + self.film(t)

  def energy_given(self, cond, y, gram: bool = False):
    """E from ``conditioning``'s output and y (B, out_dim) -> (B, 1).

    ``gram``: the last layer as ``gram_square_norm`` (same value, cheaper
    dE/dy for large batches; see ``gram_pays``).
    """
    h_inp, g2, b2, g3, b3 = cond
    h = swish(h_inp + self.fc1.project_b(y))
    h = swish(self.fc2(h) * (1.0 + g2) + b2)
    h = swish(self.fc3(h) * (1.0 + g3) + b3)
    if gram:
      fc4 = self.fc4.variables["params"]
      return gram_square_norm(h, fc4["kernel"], fc4["bias"], self.matmul)[:, None]
    return jnp.sum(jnp.square(self.fc4(h)), axis=-1, keepdims=True)

  def gram_pays(self, batch: int, evaluations: int = 1) -> bool:
    """Whether dE/dy through W4 W4^T needs fewer multiply-adds (static).

    Direct: fc4 and its transpose, 2 B hidden out_dim. Gram: B hidden^2, plus
    hidden^2 out_dim once for W4 W4^T, shared by the ``evaluations`` calls of a
    loop (XLA hoists it). For hidden 512, out_dim 400 it pays from B = 712 for
    one call and B = 72 for a 10-step chain, saving 8 % of a score evaluation's
    matmuls, and as much again in the denoising loss's gradient of the score.
    """
    return batch * evaluations * (2 * self.out_dim - self.hidden) > self.hidden * self.out_dim

  def __call__(self, inp, y, t):
    return self.energy_given(self.conditioning(inp, t), y)


@dataclasses.dataclass(frozen=True)
class EnergyFunction:
  """Pure-function view of an EnergyMLP.

  ``energy(params, inp, y, t)`` -> (B, 1); ``condition(params, inp, t)`` and
  ``given(params, cond, y)`` split it at the y-independent part.
  """

  module: EnergyMLP

  def __call__(self, params, inp, y, t):
    return self.module.apply({"params": params}, inp, y, t)

  def condition(self, params, inp, t):
    return self.module.apply({"params": params}, inp, t, method=EnergyMLP.conditioning)

  def given(self, params, cond, y, gram: bool = False):
    return self.module.apply({"params": params}, cond, y, gram, method=EnergyMLP.energy_given)


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


def conditioned_energy_and_score(energy_fn: EnergyFunction, params, cond, y,
                                 evaluations: int = 1):
  """(E (B,), dE/dy (B, D)): ``jax.value_and_grad`` of the summed energy given ``cond``.

  Summing is exact per sample: each E_i depends on y_i only, so a sample's score
  does not depend on the batch it sits in (no division by the batch size).
  ``evaluations``: how many calls share the parameters (a chain's steps), for
  ``EnergyMLP.gram_pays``.
  """
  gram = energy_fn.module.gram_pays(y.shape[0], evaluations)

  def total(y_):
    e = energy_fn.given(params, cond, y_, gram)[:, 0]
    return jnp.sum(e), e
  (_, energy), score_ = jax.value_and_grad(total, has_aux=True)(y)
  return energy, score_


def conditioned_score(energy_fn: EnergyFunction, params, cond, y, evaluations: int = 1):
  """dE/dy (B, D) given ``cond``; differentiable w.r.t. params (the denoiser's output)."""
  return conditioned_energy_and_score(energy_fn, params, cond, y, evaluations)[1]


def score(energy_fn: EnergyFunction, params, inp, y, t):
  """dE/dy (B, D) from (inp, t)."""
  return conditioned_score(energy_fn, params, energy_fn.condition(params, inp, t), y)
