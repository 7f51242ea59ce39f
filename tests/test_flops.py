"""The analytic matmul FLOP counts the benchmark reports."""

import re

import jax
import jax.numpy as jnp
import pytest

from ired_cd import flops, gram, train
from tests import _tiny


def test_counts_dots_scans_and_skips_dead_code():
  a, b = jnp.ones((4, 5)), jnp.ones((5, 6))
  assert flops.count_matmul_flops(lambda a, b: a @ b, a, b) == 2 * 4 * 5 * 6

  def scanned(a, b):
    def step(carry, _):
      unused = carry @ b  # dead: XLA drops it, so the count does too  # noqa: F841
      return carry, carry[:, :5] @ b
    return jax.lax.scan(step, a, None, length=3)[1]

  assert flops.count_matmul_flops(scanned, a, b) == 3 * 2 * 4 * 5 * 6


def test_gram_score_counts_no_parameter_cotangents():
  """A score through gram_square_norm costs W W^T, h (W W^T) and W b, not the z = h W + b
  that only the parameter cotangents would need."""
  h, w, b = jnp.ones((8, 6)), jnp.ones((6, 4)), jnp.ones((4,))
  score = jax.grad(lambda h_: jnp.sum(gram.gram_square_norm(h_, w, b)))
  per_score = 2 * (6 * 4 * 6 + 8 * 6 * 6 + 6 * 4)
  assert flops.count_matmul_flops(score, h) == per_score
  # Inside a while loop too (the sampler's descent), where JAX's own DCE does not reach.
  descent = lambda h_: jax.lax.fori_loop(0, jnp.int32(3), lambda i, x: score(x), h_)  # noqa: E731
  assert flops.count_matmul_flops(descent, h, while_trip_count=3) == 3 * per_score


def test_dead_code_elimination_is_jax_dce_jaxpr():
  """The count leans on ``flops.DCE_SYMBOL``, outside JAX's compatibility policy: this fails,
  naming it, when a JAX release moves it or changes what it takes or returns."""
  jaxpr = jax.make_jaxpr(lambda a: (a @ a, a + 1.0)[1])(jnp.ones((3, 3))).jaxpr
  assert [e.primitive.name for e in jaxpr.eqns] == ["dot_general", "add"]
  try:
    live = flops.eliminate_dead_code(jaxpr)
  except Exception as err:  # noqa: BLE001 - any failure here means the symbol changed
    raise AssertionError(f"{flops.DCE_SYMBOL} no longer works as flops expects: {err!r}") from err
  assert [e.primitive.name for e in live.eqns] == ["add"], (flops.DCE_SYMBOL, live)


def test_missing_dead_code_elimination_names_the_symbol(monkeypatch):
  monkeypatch.delattr(jax.interpreters.partial_eval, "dce_jaxpr")
  message = rf"{re.escape(flops.DCE_SYMBOL)}.*jax {re.escape(jax.__version__)} does not export"
  with pytest.raises(ImportError, match=message):
    flops.count_matmul_flops(lambda a: a @ a, jnp.ones((2, 2)))


def test_sampler_flops_count_the_descent_only_when_it_runs():
  """Without descent the sampler's count holds the T score calls only (it used to count the
  descent branch of the traced program's cond: 0 steps read as much as 1)."""
  setup = _tiny.tiny_setup("none")
  params = train.init_state(setup).ema_params
  inp, _ = setup.task.sample(jax.random.PRNGKey(1), 8, False)
  counts = [flops.sampler_flops(setup, params, inp, inner) for inner in (0, 1, 2)]
  assert 0 < counts[0] < counts[1] < counts[2]
