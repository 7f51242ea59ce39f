"""Gradient flow: per-sample scores, CD through E_neg only, double backprop of the denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ired_cd import langevin, strategies
from ired_cd import model as model_lib
from ired_cd.matmul import MATMUL_DTYPES
from tests import _tiny
from tests._programs import dot_operands

D = _tiny.DIM


def _data(b, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(k1, (b, D)), jax.random.normal(k2, (b, D)),
          jax.random.randint(k3, (b,), 0, _tiny.T))


def _max_abs(tree):
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(tree))


def test_score_does_not_depend_on_batch():
  """A sample's score alone equals its score inside a batch of 256 (no batch-size scaling)."""
  fn, params = _tiny.small_energy()
  inp, y, t = _data(256)
  energy_and_score = jax.jit(lambda *a: model_lib.energy_and_score(fn, params, *a))
  e_batch, s_batch = energy_and_score(inp, y, t)
  assert float(jnp.min(jnp.linalg.norm(s_batch, axis=-1))) > 0
  for i in (0, 17, 255):
    e_one, s_one = energy_and_score(inp[i:i + 1], y[i:i + 1], t[i:i + 1])
    np.testing.assert_allclose(s_one[0], s_batch[i], rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(s_batch[i]))))
    np.testing.assert_allclose(e_one[0], e_batch[i], rtol=1e-5)


@pytest.fixture(scope="module")
def chain_setup():
  fn, params = _tiny.small_energy()
  inp, y_init, t = _data(16, seed=1)
  noises = jax.random.normal(jax.random.PRNGKey(2), (3,) + y_init.shape)
  return fn, params, inp, y_init, t, noises


def test_cd_gradient_flows_through_e_neg_only(chain_setup):
  """Through a Langevin negative, d mean(E_neg)/d params is non-zero and equals the gradient of
  E at the (fixed) chain output; the CD loss's gradient is grad E_pos - grad E_neg."""
  fn, params, inp, y_init, t, noises = chain_setup
  sch = _tiny.schedule()
  x_pos = 0.5 * y_init

  @jax.jit
  def through_chain(p):
    def e_neg_mean(p_):
      x_neg, _ = langevin.langevin_chain(fn, p_, inp, y_init, t, noises, sch)
      return jnp.mean(fn(p_, inp, x_neg, t)), x_neg

    def cd(p_):
      x_neg, _ = langevin.langevin_chain(fn, p_, inp, y_init, t, noises, sch)
      e_pos, e_neg = fn(p_, inp, x_pos, t)[:, 0], fn(p_, inp, x_neg, t)[:, 0]
      return jnp.mean(strategies.cd_loss_terms(e_pos, e_neg))

    g_neg, x_neg = jax.grad(e_neg_mean, has_aux=True)(p)
    return g_neg, jax.grad(cd)(p), x_neg

  @jax.jit
  def at_fixed_points(p, x_neg):
    mean_energy = lambda p_, x: jnp.mean(fn(p_, inp, x, t))  # noqa: E731
    return jax.grad(mean_energy)(p, x_neg), jax.grad(mean_energy)(p, x_pos)

  g_neg, g_cd, x_neg = through_chain(params)
  assert float(jnp.max(jnp.abs(x_neg - y_init))) > 0  # the chain moved
  fixed_neg, fixed_pos = at_fixed_points(params, x_neg)
  assert _max_abs(g_neg) > 1e-4
  for layer in ("fc1", "fc4", "t_map_fc3"):
    assert float(jnp.max(jnp.abs(g_neg[layer]["kernel"]))) > 0, layer
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
                         g_neg, fixed_neg)
  jax.tree_util.tree_map(
      lambda a, b, c: np.testing.assert_allclose(a, b - c, rtol=1e-4, atol=1e-7),
      g_cd, fixed_pos, fixed_neg)


def test_gradient_wrt_langevin_start_is_exactly_zero(chain_setup):
  """No gradient flows through the sampler: d E(chain(y_init)) / d y_init == 0.0 exactly."""
  fn, params, inp, y_init, t, noises = chain_setup
  sch = _tiny.schedule()

  def energy_of_chain(y0):
    x_neg, _ = langevin.langevin_chain(fn, params, inp, y0, t, noises, sch)
    return jnp.sum(fn(params, inp, x_neg, t))

  g = jax.jit(jax.grad(energy_of_chain))(y_init)
  assert g.shape == y_init.shape
  np.testing.assert_array_equal(g, np.zeros(y_init.shape, np.float32))
  # Sanity: without the chain the same energy does depend on its input.
  direct = jax.jit(jax.grad(lambda y0: jnp.sum(fn(params, inp, y0, t))))(y_init)
  assert float(jnp.max(jnp.abs(direct))) > 0


def test_denoising_loss_double_backprop():
  """The denoising loss differentiates through dE/dy: its param gradient is non-zero in every
  layer and matches a central finite difference along the gradient direction."""
  fn, params = _tiny.small_energy()
  sch = _tiny.schedule()
  inp, x0, t = _data(32, seed=3)
  eps = jax.random.normal(jax.random.PRNGKey(4), x0.shape)
  loss = jax.jit(lambda p: jnp.mean(strategies.denoising_loss(fn, p, sch, inp, x0, t, eps)[0]))
  grads = jax.jit(jax.grad(loss))(params)
  for name, layer in grads.items():
    assert float(jnp.max(jnp.abs(layer["kernel"]))) > 0, name
  norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grads)))
  assert float(norm) > 1e-4
  h = 1e-2
  shift = lambda s: jax.tree_util.tree_map(lambda p, g: p + s * g / norm, params, grads)  # noqa
  fd = (loss(shift(h)) - loss(shift(-h))) / (2 * h)
  np.testing.assert_allclose(float(fd), float(norm), rtol=1e-2)


@pytest.mark.parametrize("calls,gram", [(1, False), (2, True)], ids=["direct", "gram"])
def test_gram_score_matches_plain_autodiff_to_second_order(calls, gram):
  """The score through the Gram last layer equals the plain autodiff score, and so do the
  parameter gradients of a loss on it (what the denoising loss differentiates).

  hidden 24, out 16: W4 W4^T pays from B * calls = 48, so 32 rows take the direct form
  once and the Gram form when two calls share it (``sharing(2)``: a hidden x hidden product).
  """
  m = model_lib.EnergyMLP(out_dim=D, hidden=24, emb_dim=16, num_timesteps=_tiny.T)
  fn = model_lib.EnergyFunction(m).sharing(calls)
  params = model_lib.init_params(m, jax.random.PRNGKey(2))
  inp, y, t = _data(32, seed=5)
  target = jax.random.normal(jax.random.PRNGKey(6), y.shape)

  def with_rule(p):
    return model_lib.conditioned_score(fn, p, fn.condition(p, inp, t), y)

  def autodiff(p):
    return jax.grad(lambda y_: jnp.sum(fn(p, inp, y_, t)))(y)

  jaxpr = str(jax.make_jaxpr(with_rule)(params))
  assert ("f32[24,24] = dot_general" in jaxpr) == gram
  np.testing.assert_allclose(jax.jit(with_rule)(params), autodiff(params), rtol=1e-4,
                             atol=1e-5 * _max_abs(autodiff(params)))
  energy, _ = model_lib.conditioned_energy_and_score(fn, params, fn.condition(params, inp, t), y)
  np.testing.assert_allclose(energy, fn(params, inp, y, t)[:, 0], rtol=1e-5)
  loss = lambda score_fn, p: jnp.mean(jnp.square(score_fn(p) - target))  # noqa: E731
  g_rule = jax.jit(jax.grad(lambda p: loss(with_rule, p)))(params)
  g_auto = jax.jit(jax.grad(lambda p: loss(autodiff, p)))(params)
  for name in g_auto:
    for part in ("kernel", "bias"):
      want = g_auto[name][part]
      np.testing.assert_allclose(g_rule[name][part], want, rtol=1e-3,
                                 atol=1e-4 * _max_abs(want), err_msg=f"{name}/{part}")


@pytest.mark.parametrize("calls", [1, 2], ids=["direct", "gram"])
def test_bf16_model_denoising_gradient(calls):
  """With matmul_dtype='bfloat16' the denoising loss's parameter gradient runs its batch-sized
  products on bfloat16 operands only, and stays within bfloat16 error of the float32 one."""
  grads = {}
  for dtype in MATMUL_DTYPES:
    m = model_lib.EnergyMLP(out_dim=D, hidden=24, emb_dim=16, num_timesteps=_tiny.T,
                            matmul_dtype=dtype)
    fn = model_lib.EnergyFunction(m).sharing(calls)
    params = model_lib.init_params(m, jax.random.PRNGKey(2))
    inp, y, t = _data(32, seed=5)
    target = jax.random.normal(jax.random.PRNGKey(6), y.shape)

    def loss(p):
      s = model_lib.conditioned_score(fn, p, fn.condition(p, inp, t), y)
      return jnp.mean(jnp.square(s - target))

    grads[dtype] = jax.jit(jax.grad(loss))(params)
    if dtype == "bfloat16":
      dots = dot_operands(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
      batch_sized = [dtypes for dtypes, shapes in dots if any(32 in s for s in shapes)]
      assert len(batch_sized) >= 8 and set(batch_sized) == {("bfloat16", "bfloat16")}, dots
      # float32 products left: W4 b4 of the Gram form and its derivatives (parameter-sized).
      float32 = [shapes for dtypes, shapes in dots if "float32" in dtypes]
      assert all(D in shapes[0] + shapes[1] for shapes in float32), dots
      assert bool(float32) == (calls > 1), dots
  for name, layer in grads["float32"].items():
    for part, want in layer.items():
      np.testing.assert_allclose(grads["bfloat16"][name][part], want, rtol=0.1,
                                 atol=0.05 * _max_abs(want), err_msg=f"{name}/{part}")
