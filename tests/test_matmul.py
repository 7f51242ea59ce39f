"""The model's products: bfloat16 to any derivative order, row-major copies on CPU only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ired_cd import matmul as matmul_lib
from tests._programs import compiled_dots, dot_operands, primitive_count

BARRIER = "optimization_barrier"


def _max_abs(x):
  return float(jnp.max(jnp.abs(x)))


def _score_gradient(row_major=None):
  """w -> |d/dx sum(tanh(x w)^2)|^2: a layer's score and its parameter gradient, whose
  products take both transposed layouts (g W^T and x^T g)."""
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  x = jax.random.normal(keys[0], (64, 32))

  def fn(w):
    score = jax.grad(lambda x_: jnp.sum(
        jnp.tanh(matmul_lib.bf16_matmul(x_, w, False, False, row_major)) ** 2))(x)
    return jnp.sum(score ** 2)
  return jax.grad(fn), jax.random.normal(keys[1], (32, 32))


@pytest.mark.parametrize("row_major", [True, False], ids=["row_major", "transposed"])
@pytest.mark.parametrize("transpose_a,transpose_b", [(False, False), (False, True),
                                                     (True, False), (True, True)])
def test_bf16_matmul_derivatives_match_autodiff_of_rounded_operands(transpose_a, transpose_b,
                                                                    row_major):
  """bf16_matmul's first and second derivatives, for each operand layout and either way of
  transposing, equal plain float32 autodiff applied to bfloat16-rounded operands (up to the
  rounding of the cotangents), and every product in them, at any order, multiplies bfloat16
  by bfloat16."""
  shape_a, shape_b = (24, 32) if transpose_a else (32, 24), (16, 24) if transpose_b else (24, 16)
  a, b = (jax.random.normal(k, s) for k, s in zip(jax.random.split(jax.random.PRNGKey(0)),
                                                  [shape_a, shape_b]))
  rounded = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
  op_a = lambda x: x.T if transpose_a else x  # noqa: E731
  op_b = lambda x: x.T if transpose_b else x  # noqa: E731
  bf16 = lambda x, y: matmul_lib.bf16_matmul(x, y, transpose_a, transpose_b, row_major)  # noqa

  def loss(matmul, a_, b_):
    return jnp.sum(jnp.sin(matmul(a_, b_)))

  def second_order(matmul):
    """d/db of |d loss / d a|^2: the shape of the denoising loss's gradient."""
    return jax.grad(lambda b_: jnp.sum(jax.grad(loss, 1)(matmul, a, b_) ** 2))(b)

  exact = op_a(rounded(a)) @ op_b(rounded(b))  # bf16 x bf16 products are exact in float32
  np.testing.assert_allclose(bf16(a, b), exact, rtol=1e-5, atol=1e-6 * _max_abs(exact))
  for argnum in (1, 2):
    np.testing.assert_allclose(
        jax.grad(loss, argnum)(bf16, a, b),
        jax.grad(loss, argnum)(lambda x, y: op_a(rounded(x)) @ op_b(rounded(y)), a, b),
        rtol=2e-2, atol=2e-2)
  want = second_order(lambda x, y: op_a(x) @ op_b(y))
  np.testing.assert_allclose(second_order(bf16), want, rtol=5e-2, atol=5e-2 * _max_abs(want))
  dots = dot_operands(jax.make_jaxpr(lambda: second_order(bf16))().jaxpr)
  assert len(dots) >= 4 and {dtypes for dtypes, _ in dots} == {("bfloat16", "bfloat16")}, dots


def test_row_major_copy_runs_every_product_untransposed_in_bfloat16():
  """With the copy, XLA keeps every bfloat16 product of a layer's training in bfloat16 with
  row-major, untransposed operands (the only layout XLA:CPU runs at the bfloat16 rate; it
  computes the others in float32): no compiled product takes a float32 or transposed operand."""
  grad, w = _score_gradient(row_major=True)
  dots = compiled_dots(jax.jit(grad).lower(w).compile().as_text())
  assert len(dots) >= 4 and set(dots) == {("bf16", "bf16", "1", "0")}, dots


def test_without_row_major_copy_products_take_transposed_operands():
  """Without the copy (GPU, TPU) the transposes stay plain ``transpose``s that XLA may fold
  into the products: no barrier, and the same values as with the copy."""
  plain, w = _score_gradient(row_major=False)
  copied, _ = _score_gradient(row_major=True)
  plain_jaxpr, copied_jaxpr = jax.make_jaxpr(plain)(w).jaxpr, jax.make_jaxpr(copied)(w).jaxpr
  assert primitive_count(plain_jaxpr, BARRIER) == 0
  assert primitive_count(plain_jaxpr, "transpose") >= 2
  assert primitive_count(copied_jaxpr, BARRIER) >= 2  # g W^T and x^T g
  np.testing.assert_allclose(jax.jit(plain)(w), jax.jit(copied)(w), rtol=1e-5,
                             atol=1e-6 * _max_abs(jax.jit(copied)(w)))


@pytest.mark.parametrize("backend,copies", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_row_major_copy_only_where_the_default_backend_is_cpu(monkeypatch, backend, copies):
  """``row_major=None`` (what the model passes) decides at trace time from the default backend,
  in the forward product and in the derivatives' products alike."""
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert matmul_lib.row_major_default() == copies
  grad, w = _score_gradient()
  assert (primitive_count(jax.make_jaxpr(grad)(w).jaxpr, BARRIER) > 0) == copies


def test_matmul_for_maps_each_dtype_to_its_product():
  assert matmul_lib.matmul_for("float32") is matmul_lib.f32_matmul
  assert matmul_lib.matmul_for("bfloat16") is matmul_lib.bf16_matmul
  a, b = jnp.arange(6.0).reshape(2, 3), jnp.arange(12.0).reshape(4, 3)
  np.testing.assert_array_equal(matmul_lib.f32_matmul(a, b, transpose_b=True), a @ b.T)
  c = jnp.arange(8.0).reshape(2, 4)
  np.testing.assert_array_equal(matmul_lib.f32_matmul(a, c, transpose_a=True), a.T @ c)
  e = jnp.arange(10.0).reshape(5, 2)
  np.testing.assert_array_equal(matmul_lib.f32_matmul(a, e, True, True), a.T @ e.T)
  with pytest.raises(ValueError, match=r"matmul_dtype='float16'; allowed: \('float32', 'bfloat16'\)"):
    matmul_lib.matmul_for("float16")
