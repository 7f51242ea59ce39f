"""Stabilisers of the CD energy term: bounded loss, re-noised negatives, gradient split and
surgery, learning-rate schedule, and their config checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from ired_cd import schema
from ired_cd import strategies, train
from tests import _tiny

D = _tiny.DIM


# ------------------------------------------------------------------ bounded CD loss
def test_logistic_cd_loss_is_softplus_and_bounded():
  """logistic: softplus(E_pos - E_neg) >= 0 whatever the gap; linear goes to -inf with it."""
  e_pos = jnp.asarray([0.0, 1.0, -3.0, 0.0])
  e_neg = jnp.asarray([0.0, 0.0, 0.0, 1e4])
  logistic = strategies.cd_loss_terms(e_pos, e_neg, form="logistic")
  np.testing.assert_allclose(logistic, np.log1p(np.exp(np.asarray(e_pos - e_neg))), rtol=1e-6)
  assert np.all(np.asarray(logistic) >= 0)
  assert float(strategies.cd_loss_terms(e_pos, e_neg)[3]) == -1e4  # linear: unbounded


def test_logistic_gradient_fades_with_the_gap_and_linear_does_not():
  """d loss / d E_neg is -sigmoid(E_pos - E_neg) (-> 0 for a large gap) vs -1 for linear."""
  gaps = jnp.asarray([0.0, 2.0, 20.0])

  def grad_neg(form):
    return jax.grad(lambda n: jnp.sum(strategies.cd_loss_terms(jnp.zeros(3), n, form=form)))(gaps)

  np.testing.assert_allclose(grad_neg("logistic"), -jax.nn.sigmoid(-gaps), rtol=1e-6)
  assert abs(float(grad_neg("logistic")[2])) < 1e-8
  np.testing.assert_allclose(grad_neg("linear"), -np.ones(3))


def test_margin_keeps_the_logistic_term_pushing_until_the_gap_exceeds_it():
  """softplus(E_pos - E_neg + m): at a gap of 5 the plain form has faded (gradient 0.007),
  with m = 10 it still pushes at nearly full strength; past m + a few units it fades too."""
  gaps = jnp.asarray([0.0, 5.0, 20.0])

  def loss_and_grad(margin):
    fn = lambda n: jnp.sum(strategies.cd_loss_terms(jnp.zeros(3), n, form="logistic",
                                                     margin=margin))
    return strategies.cd_loss_terms(jnp.zeros(3), gaps, form="logistic", margin=margin), \
        jax.grad(fn)(gaps)

  loss, grad = loss_and_grad(10.0)
  np.testing.assert_allclose(loss, np.log1p(np.exp(10.0 - np.asarray(gaps))), rtol=1e-6)
  np.testing.assert_allclose(grad, -jax.nn.sigmoid(10.0 - gaps), rtol=1e-6)
  _, plain = loss_and_grad(0.0)
  assert abs(float(plain[1])) < 0.01 < 0.99 < abs(float(grad[1]))
  assert abs(float(grad[2])) < 1e-4


def test_logistic_loss_with_regulariser():
  """The regulariser adds alpha (E_pos^2 + E_neg^2) on top of either form."""
  e_pos, e_neg = jnp.asarray([1.0, -2.0]), jnp.asarray([0.5, 3.0])
  got = strategies.cd_loss_terms(e_pos, e_neg, 0.1, "logistic")
  want = jax.nn.softplus(e_pos - e_neg) + 0.1 * (e_pos ** 2 + e_neg ** 2)
  np.testing.assert_allclose(got, want, rtol=1e-6)


# ------------------------------------------------------------------ re-noised negatives
def _frozen_chain_metrics(negatives):
  """make_loss_fn's metrics of cd_langevin with a chain that does not move: it starts at
  q_sample(x0, t, 0) = sqrt(abar_t) x0 (mining_noise_scale 0), draws no noise (sigma 0) and
  takes steps of norm ~1e-30 (langevin_grad_clip), so its answer x0_estimate is x0 itself."""
  c = _tiny.tiny_config("cd_langevin", mining_opt_steps=2, mining_noise_scale=0.0,
                        langevin_sigma_multiplier=0.0, langevin_grad_clip=1e-30,
                        cd_negatives=negatives)
  fn, params = _tiny.small_energy()
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  inp = jax.random.normal(k1, (32, D))
  x0 = jnp.clip(0.5 * jax.random.normal(k2, (32, D)), -1.5, 1.5)
  loss_fn = strategies.make_loss_fn(fn, _tiny.schedule(), strategies.LossSettings.from_config(c))
  _, (metrics, _) = jax.jit(loss_fn)(params, inp, x0, jax.random.PRNGKey(4), jnp.int32(0), None)
  return metrics


def test_renoised_negative_is_the_chain_answer_at_the_positive_noise():
  """renoised: E_neg is the energy of q_sample(answer of the chain, t, eps_pos), so a chain
  whose answer is the true x0 gives the positive itself (E_neg = E_pos: same noise, only the
  answer may differ). chain: the chain's own x_t = sqrt(abar_t) x0 is scored instead, and
  denoised: the model's answer from it; both differ from the positive. E_pos never changes."""
  metrics = {n: _frozen_chain_metrics(n) for n in ("chain", "renoised", "denoised")}
  e_pos = float(metrics["chain"]["energy_pos"])
  for m in metrics.values():
    np.testing.assert_allclose(m["energy_pos"], e_pos, rtol=1e-6)
  np.testing.assert_allclose(metrics["renoised"]["energy_neg"], e_pos, rtol=1e-6)
  for other in ("chain", "denoised"):  # 2e-3 and 2e-4 apart on this untrained model
    assert abs(float(metrics[other]["energy_neg"]) - e_pos) > 1e-5 * abs(e_pos), other


# ------------------------------------------------------------------ gradient split and surgery
def _tree(values):
  return {"a": jnp.asarray(values[:2], jnp.float32), "b": jnp.asarray(values[2:], jnp.float32)}


def _flat(tree):
  return np.concatenate([np.ravel(tree["a"]), np.ravel(tree["b"])])


def test_combine_without_surgery_is_the_sum_and_measures_the_conflict():
  g_d, g_e = _tree([1.0, 0.0, 0.0]), _tree([-2.0, 0.0, 0.0])
  grad, m = train.combine_gradients(g_d, g_e)
  np.testing.assert_allclose(_flat(grad), [-1.0, 0.0, 0.0])
  np.testing.assert_allclose([m["grad_norm_denoise"], m["grad_norm_energy"], m["grad_cosine"]],
                             [1.0, 2.0, -1.0], rtol=1e-6)


def test_projection_removes_only_the_opposing_component():
  """project: <g_e', g_d> >= 0 afterwards; the orthogonal part is kept; an agreeing g_e is
  left as it is."""
  g_d = _tree([1.0, 0.0, 0.0])
  grad, m = train.combine_gradients(g_d, _tree([-3.0, 2.0, 1.0]), "project")
  np.testing.assert_allclose(_flat(grad), [1.0, 2.0, 1.0], rtol=1e-6)  # g_d + (0, 2, 1)
  assert float(m["grad_cosine"]) < 0  # measured before the surgery
  agreeing = _tree([0.5, 2.0, 1.0])
  grad, _ = train.combine_gradients(g_d, agreeing, "project")
  np.testing.assert_allclose(_flat(grad), [1.5, 2.0, 1.0], rtol=1e-6)
  rng = np.random.default_rng(0)
  for _ in range(5):
    d, e = _tree(rng.normal(size=3)), _tree(rng.normal(size=3))
    grad, _ = train.combine_gradients(d, e, "project")
    e_kept = _flat(grad) - _flat(d)
    assert e_kept @ _flat(d) >= -1e-6


def test_ratio_cap_bounds_the_energy_gradient():
  g_d = _tree([1.0, 0.0, 0.0])
  grad, _ = train.combine_gradients(g_d, _tree([0.0, 30.0, 40.0]), max_ratio=2.0)
  np.testing.assert_allclose(_flat(grad), [1.0, 1.2, 1.6], rtol=1e-6)  # |g_e| 50 -> 2
  grad, _ = train.combine_gradients(g_d, _tree([0.0, 0.3, 0.4]), max_ratio=2.0)
  np.testing.assert_allclose(_flat(grad), [1.0, 0.3, 0.4], rtol=1e-6)  # under the cap
  grad, _ = train.combine_gradients(g_d, _tree([-3.0, 30.0, 40.0]), "project", max_ratio=1.0)
  np.testing.assert_allclose(_flat(grad), [1.0, 0.6, 0.8], rtol=1e-5)  # projected, then capped


@pytest.mark.parametrize("strategy", ["ired", "cd_full"])
def test_split_gradients_sum_to_the_loss_gradient(strategy):
  """d/d(params, energy_params) at the same values: the parts add up to d loss / d params,
  the denoising part is that of the denoising loss alone, and the energy part is non-zero."""
  c = _tiny.tiny_config(strategy, mining_opt_steps=2)
  setup = train.build_setup(c)
  settings = dataclasses.replace(setup.loss_settings, use_energy_schedule=False)
  loss_fn = strategies.make_loss_fn(setup.energy_fn, setup.schedule, settings, setup.task.residual)
  state = train.init_state(setup)
  inp, x0 = setup.task.sample(jax.random.PRNGKey(0), c.batch_size)
  args = (inp, x0, jax.random.PRNGKey(1), jnp.int32(3), state.replay)

  @jax.jit
  def grads(params):
    whole = jax.grad(lambda p: loss_fn(p, *args)[0])(params)
    split = jax.grad(lambda p, pe: loss_fn(p, *args, energy_params=pe)[0], argnums=(0, 1))(
        params, params)
    denoise_only = jax.grad(lambda p: loss_fn(p, *args)[1][0]["loss_mse"])(params)
    return whole, split, denoise_only

  whole, (g_d, g_e), denoise_only = grads(state.params)
  total = jax.tree_util.tree_map(jnp.add, g_d, g_e)
  for a, b in zip(jax.tree_util.tree_leaves(total), jax.tree_util.tree_leaves(whole)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  for a, b in zip(jax.tree_util.tree_leaves(g_d), jax.tree_util.tree_leaves(denoise_only)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  assert float(optax.tree.norm(g_e)) > 0


def _expected_grad_norm(metrics, surgery):
  """||g_d + g_e'|| from the logged norms and cosine: g_e' = g_e, or with ``project`` and a
  negative cosine g_e less its component along g_d (then orthogonal to g_d)."""
  nd, ne, cos = (float(metrics[k]) for k in ("grad_norm_denoise", "grad_norm_energy",
                                             "grad_cosine"))
  if surgery == "project" and cos < 0:
    return np.sqrt(nd ** 2 + ne ** 2 * (1 - cos ** 2))
  return np.sqrt(nd ** 2 + ne ** 2 + 2 * cos * nd * ne)


@pytest.mark.parametrize("overrides", [
    dict(log_grad_conflict=True),
    dict(cd_loss="logistic", cd_negatives="renoised", energy_grad_surgery="project"),
    dict(cd_loss="logistic", energy_grad_max_ratio=0.5),
    dict(cd_loss="logistic", cd_negatives="denoised", energy_grad_surgery="project"),
    dict(cd_loss="logistic", cd_negatives="denoised", energy_grad_surgery="project", cd_margin=5.0),
])
def test_stabilised_train_steps_run_and_log_the_conflict(overrides):
  """Three cd_full steps with each stabiliser are finite, and each step's gradient norm is the
  one its logged parts (norms and cosine) and surgery give: within the cap's triangle bounds
  with energy_grad_max_ratio."""
  setup = train.build_setup(_tiny.tiny_config("cd_full", mining_opt_steps=2, **overrides))
  step = train.jit_train_step(setup)
  state = train.init_state(setup)
  for _ in range(3):
    state, metrics = step(state)
    for key in ("loss", "grad_norm", "grad_norm_denoise", "grad_norm_energy", "grad_cosine"):
      assert np.isfinite(float(metrics[key])), key
    norm, nd = float(metrics["grad_norm"]), float(metrics["grad_norm_denoise"])
    ratio = overrides.get("energy_grad_max_ratio")
    if ratio:
      assert (1 - ratio) * nd * (1 - 1e-4) <= norm <= (1 + ratio) * nd * (1 + 1e-4)
    else:
      expected = _expected_grad_norm(metrics, overrides.get("energy_grad_surgery"))
      np.testing.assert_allclose(norm, expected, rtol=2e-3)


@pytest.mark.parametrize("strategy", ["ired", "nce_random"])
def test_surgery_on_a_baseline_is_refused(strategy):
  """Surgery and cap are CD switches: a baseline that would ignore them refuses them, naming
  the field, the strategy and the one value allowed; deriving the baseline from a stabilised
  config (the ablation) turns them off."""
  for field, value, off in (("energy_grad_surgery", "project", "'none'"),
                            ("energy_grad_max_ratio", 2.0, "0.0")):
    with pytest.raises(schema.ConfigError, match=(
        rf"^config\.{field}: mining_strategy='{strategy}' does not read it \(only the CD "
        rf"strategies do\): must be {off} for {strategy}, got {value!r}$")):
      _tiny.tiny_config(strategy, **{field: value})
  stabilised = base.get_config("tiny")
  base.stabilise(stabilised)
  stabilised.energy_grad_max_ratio = 2.0
  c = base.run_config(stabilised, strategy)
  assert (c.energy_grad_surgery, c.energy_grad_max_ratio, c.cd_loss) == ("none", 0.0, "linear")
  kept = base.run_config(stabilised, "cd_langevin")
  assert (kept.energy_grad_surgery, kept.energy_grad_max_ratio) == ("project", 2.0)


def test_none_refuses_the_conflict_log():
  """Without an energy term there is nothing to split: log_grad_conflict is refused on none."""
  with pytest.raises(schema.ConfigError, match=r"^config\.log_grad_conflict: .*'none'.*"
                     r"only the strategies with an energy term"):
    _tiny.tiny_config("none", log_grad_conflict=True)


# ------------------------------------------------------------------ schedule and config
def test_cosine_learning_rate_schedule():
  c = base.get_config()
  assert train.learning_rate_schedule(c) == c.learning_rate  # constant by default
  c.learning_rate, c.learning_rate_schedule, c.learning_rate_decay_steps = 1e-3, "cosine", 100
  lr = train.learning_rate_schedule(c)
  np.testing.assert_allclose([lr(0), lr(50), lr(100), lr(200)], [1e-3, 5e-4, 0.0, 0.0],
                             atol=1e-9)


@pytest.mark.parametrize("field, value, allowed", [
    ("cd_loss", "hinge", "('linear', 'logistic')"),
    ("cd_negatives", "x0", "('chain', 'renoised', 'denoised')"),
    ("energy_grad_surgery", "pcgrad", "('none', 'project')"),
    ("learning_rate_schedule", "linear", "('constant', 'cosine')"),
])
def test_bad_stabiliser_values_are_named(field, value, allowed):
  c = base.get_config()
  c[field] = value
  with pytest.raises(schema.ConfigError, match=rf"config\.{field}: .*{allowed}"):
    schema.validate(c, base.get_config())


@pytest.mark.parametrize("cd_loss, margin, message", [
    ("linear", 1.0, r"config\.cd_margin: needs cd_loss='logistic'"),
    ("logistic", -1.0, r"config\.cd_margin: must be >= 0"),
])
def test_bad_margin_is_named(cd_loss, margin, message):
  c = base.get_config()
  c.cd_loss, c.cd_margin = cd_loss, margin
  with pytest.raises(schema.ConfigError, match=message):
    schema.validate(c, base.get_config())


def test_negative_ratio_is_refused():
  c = base.get_config()
  c.energy_grad_max_ratio = -1.0
  with pytest.raises(schema.ConfigError, match="energy_grad_max_ratio"):
    schema.validate(c)
