"""Gradient flow: per-sample scores, CD through E_neg only, double backprop of the denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ired_cd import langevin, strategies
from ired_cd import model as model_lib
from tests import _tiny

D = _tiny.DIM


def _data(b, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(k1, (b, D)), jax.random.normal(k2, (b, D)),
          jax.random.randint(k3, (b,), 0, _tiny.T))


def _max_abs(tree):
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("num_timesteps", [_tiny.T, None], ids=["film_table", "per_sample"])
def test_score_does_not_depend_on_batch(num_timesteps):
  """A sample's score alone equals its score inside a batch of 256 (no batch-size scaling)."""
  fn, params = _tiny.small_energy(num_timesteps=num_timesteps)
  inp, y, t = _data(256)
  energy_and_score = jax.jit(lambda *a: model_lib.energy_and_score(fn, params, *a))
  e_batch, s_batch = energy_and_score(inp, y, t)
  for i in (0, 17, 255):
    e_one, s_one = energy_and_score(inp[i:i + 1], y[i:i + 1], t[i:i + 1])
    np.testing.assert_allclose(s_one[0], s_batch[i], rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(s_batch[i]))))
    np.testing.assert_allclose(e_one[0], e_batch[i], rtol=1e-5)
  # The score is dE_i/dy_i: matches a per-sample gradient.
  g = jax.grad(lambda yi: fn(params, inp[:1], yi[None], t[:1])[0, 0])(y[0])
  np.testing.assert_allclose(s_batch[0], g, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def chain_setup():
  fn, params = _tiny.small_energy()
  inp, y_init, t = _data(16, seed=1)
  noises = jax.random.normal(jax.random.PRNGKey(2), (3,) + y_init.shape)
  return fn, params, inp, y_init, t, noises


def test_cd_gradient_flows_through_e_neg(chain_setup):
  """d mean(E_neg)/d params is non-zero and equals the gradient at the (fixed) chain output."""
  fn, params, inp, y_init, t, noises = chain_setup
  sch = _tiny.schedule()

  def e_neg_mean(p):
    x_neg, _ = langevin.langevin_chain(fn, p, inp, y_init, t, noises, sch)
    return jnp.mean(fn(p, inp, x_neg, t))

  grads = jax.jit(jax.grad(e_neg_mean))(params)
  assert _max_abs(grads) > 1e-4
  for layer in ("fc1", "fc4", "t_map_fc3"):
    assert float(jnp.max(jnp.abs(grads[layer]["kernel"]))) > 0, layer
  x_fixed, _ = langevin.langevin_chain(fn, params, inp, y_init, t, noises, sch)
  want = jax.grad(lambda p: jnp.mean(fn(p, inp, x_fixed, t)))(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
                         grads, want)


def test_cd_loss_gradient_has_both_terms(chain_setup):
  """grad of mean(cd_loss_terms) = grad E_pos - grad E_neg: the negative term is not detached."""
  fn, params, inp, y_init, t, noises = chain_setup
  sch = _tiny.schedule()
  x_pos = y_init * 0.5
  x_neg, _ = langevin.langevin_chain(fn, params, inp, y_init, t, noises, sch)

  def cd(p):
    e_pos = fn(p, inp, x_pos, t)[:, 0]
    e_neg = fn(p, inp, langevin.langevin_chain(fn, p, inp, y_init, t, noises, sch)[0], t)[:, 0]
    return jnp.mean(strategies.cd_loss_terms(e_pos, e_neg))

  g_pos = jax.grad(lambda p: jnp.mean(fn(p, inp, x_pos, t)))(params)
  g_neg = jax.grad(lambda p: jnp.mean(fn(p, inp, x_neg, t)))(params)
  got = jax.jit(jax.grad(cd))(params)
  jax.tree_util.tree_map(
      lambda a, b, c: np.testing.assert_allclose(a, b - c, rtol=1e-4, atol=1e-7),
      got, g_pos, g_neg)
  assert _max_abs(g_neg) > 1e-4


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
  g_neg = jax.grad(lambda y0: jnp.sum(langevin.sample_negatives(
      fn, params, inp, y0, t, jax.random.PRNGKey(0), 2, sch)[0]))(y_init)
  np.testing.assert_array_equal(g_neg, 0.0)
  # Sanity: without the chain the same energy does depend on its input.
  assert float(jnp.max(jnp.abs(jax.grad(lambda y0: jnp.sum(fn(params, inp, y0, t)))(y_init)))) > 0


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
