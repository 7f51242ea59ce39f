"""The energy's last layer |h W + b|^2 differentiated through W W^T: a cheaper dE/dy for large batches.

Same value as the plain layer; only the cost of its derivative w.r.t. h differs.
``pays`` decides statically, from shapes, which form a score takes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ired_cd.matmul import f32_matmul


def pays(batch: int, hidden: int, out_dim: int, calls: int = 1) -> bool:
  """Whether dE/dh through W W^T needs fewer multiply-adds than through W (static).

  Direct: the layer and its transpose, 2 B hidden out_dim. Gram: B hidden^2,
  plus hidden^2 out_dim once for W W^T, shared by the ``calls`` of a loop on the
  same parameters (XLA hoists it out; ``EnergyFunction.sharing`` says how many). For hidden 512, out_dim 400 it pays from B = 712 for
  one call and from B = 72 for a 10-step chain.
  """
  return batch * calls * (2 * out_dim - hidden) > hidden * out_dim


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gram_square_norm(h, w, b, matmul=f32_matmul):
  """|h W + b|^2 per row, (B, hidden) -> (B,), differentiated through W W^T.

  The gradient w.r.t. h is 2 (h W W^T + W b): one hidden x hidden product in
  place of h W and its transpose (2 x hidden x out). The parameter cotangents
  need z = h W + b; XLA drops them where only dE/dh is used (a score). Any
  order of reverse-mode differentiation works (the denoising loss takes the
  gradient of this gradient w.r.t. the parameters). ``matmul``: the product
  used (``matmul.matmul_for``).
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
