"""The model's matrix products, one per ``matmul_dtype``: speed code kept apart from the model.

Every product is ``matmul(a, b, transpose_a=False, transpose_b=False) -> op(a) @ op(b)``,
op transposing where asked. ``float32`` is the plain XLA product. ``bfloat16``
multiplies bfloat16 operands with float32 accumulation and result, and so do all
its derivatives, so training keeps the bfloat16 rate; parameters, activations and
all other arithmetic stay float32.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

MATMUL_DTYPES = ("float32", "bfloat16")


def f32_matmul(a, b, transpose_a: bool = False, transpose_b: bool = False):
  """op(a) @ op(b) in float32: plain XLA products, transposes folded in by XLA."""
  return jnp.matmul(a.T if transpose_a else a, b.T if transpose_b else b)


def row_major_default() -> bool:
  """Whether ``bf16_matmul`` copies transposed operands to row-major: on XLA:CPU only.

  XLA:CPU runs a bfloat16 product at the bfloat16 rate only on row-major,
  untransposed operands and falls back to float32 for g W^T and x^T g; GPU and
  TPU libraries take transposed operands as they are, so the copy would only
  cost a pass over memory there. Read at trace time.
  """
  return jax.default_backend() == "cpu"


def _row_major_transpose(x):
  """x.T copied to row-major memory: a copy XLA cannot fold back into the product.

  A flat array has no transposed layout, and the barrier keeps XLA from undoing
  the reshape, so the product sees a plain row-major operand.
  """
  t = x.T
  return jax.lax.optimization_barrier(t.reshape(-1)).reshape(t.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def bf16_matmul(a, b, transpose_a: bool = False, transpose_b: bool = False,
                row_major: Optional[bool] = None):
  """op(a) @ op(b) on bfloat16 operands with float32 accumulation and result.

  ``transpose_a``/``transpose_b``: op transposes that operand. ``row_major``:
  copy a transposed operand to row-major bfloat16 first (``None``:
  ``row_major_default()``). The derivatives are ``bf16_matmul`` products again,
  to any order, so a score and the gradient of a score keep the bfloat16 speed
  (plain autodiff of a cast would multiply float32 cotangents by bfloat16
  operands, at float32 speed). Operands and cotangents stay float32 outside the
  products.
  """
  if row_major is None:
    row_major = row_major_default()
  transpose = _row_major_transpose if row_major else jnp.transpose
  a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  if transpose_a:
    a = transpose(a)
  if transpose_b:
    b = transpose(b)
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _bf16_matmul_forward(a, b, transpose_a, transpose_b, row_major):
  # The product goes through the custom rule again: a higher-order derivative
  # differentiates this function as plain code.
  return bf16_matmul(a, b, transpose_a, transpose_b, row_major), (a, b)


def _bf16_matmul_backward(transpose_a, transpose_b, row_major, residuals, g):
  # C = op(A) op(B): d op(A) = G op(B)^T and d op(B) = op(A)^T G, transposed back
  # where op transposes.
  a, b = residuals
  if transpose_a:
    grad_a = bf16_matmul(b, g, transpose_b, True, row_major)
  else:
    grad_a = bf16_matmul(g, b, False, not transpose_b, row_major)
  if transpose_b:
    grad_b = bf16_matmul(g, a, True, transpose_a, row_major)
  else:
    grad_b = bf16_matmul(a, g, not transpose_a, False, row_major)
  return grad_a, grad_b


bf16_matmul.defvjp(_bf16_matmul_forward, _bf16_matmul_backward)


def matmul_for(matmul_dtype: str) -> Callable:
  """The product ``(a, b, transpose_a=False, transpose_b=False) -> op(a) @ op(b)`` for
  ``matmul_dtype`` (one of ``MATMUL_DTYPES``)."""
  if matmul_dtype not in MATMUL_DTYPES:
    raise ValueError(f"matmul_dtype={matmul_dtype!r}; allowed: {MATMUL_DTYPES}")
  return bf16_matmul if matmul_dtype == "bfloat16" else f32_matmul
