"""Loss pieces of the mining strategies: filter, mask, warm-up, regulariser, replay mixing,
through ``make_loss_fn``'s metrics where they act inside the loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import q202, q204
from ired_cd import model, replay, strategies, train
from tests import _tiny

D = _tiny.DIM


# ------------------------------------------------------------------ residual filter
def test_residual_keep_fixed_tau():
  """A fixed tau keeps exactly the samples with residual >= tau (ties kept)."""
  r = jnp.asarray([0.1, 0.5, 0.3, 0.9, 0.7, 0.5])
  np.testing.assert_array_equal(strategies.residual_keep(r, 0.3, 0.5), [0, 1, 0, 1, 1, 1])
  np.testing.assert_array_equal(strategies.residual_keep(r, 0.3, 0.0), np.ones(6))


def test_residual_keep_quantile():
  """tau = None: the batch quantile (numpy's linear rule) is the threshold."""
  r = jax.random.uniform(jax.random.PRNGKey(0), (100,))
  keep = np.asarray(strategies.residual_keep(r, 0.3, None))
  np.testing.assert_array_equal(keep, (np.asarray(r) >= np.quantile(np.asarray(r), 0.3)))
  assert keep.sum() == 70
  assert strategies.residual_keep(r, 0.0, None).sum() == 100
  np.testing.assert_array_equal(strategies.residual_keep(r, 1.0, None),
                                np.asarray(r) == np.asarray(r).max())


def _small_setup(b, seed=0):
  fn, params = _tiny.small_energy()
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return fn, params, jax.random.normal(k1, (b, D)), 0.5 * jax.random.normal(k2, (b, D))


@functools.lru_cache(maxsize=None)
def _jitted_loss(settings, residual_fn):
  return jax.jit(strategies.make_loss_fn(_tiny.small_energy()[0], _tiny.schedule(), settings,
                                         residual_fn))


def _loss_metrics(strategy, batch, residual_fn=None, buffer=None, inp=None, **overrides):
  """(metrics, buffer) of ``make_loss_fn`` for the tiny config of ``strategy`` with
  ``overrides`` (a 2-step chain), on the small model and a fixed batch and key."""
  c = _tiny.tiny_config(strategy, **{"mining_opt_steps": 2, **overrides})
  _, params, inp_, x0 = _small_setup(batch)
  loss_fn = _jitted_loss(strategies.LossSettings.from_config(c), residual_fn)
  _, (metrics, buffer) = loss_fn(params, inp_ if inp is None else inp, x0,
                                 jax.random.PRNGKey(1), jnp.int32(0), buffer)
  return metrics, buffer


def _ramp_residual(inp, x):
  """Residual i for sample i (an oracle whose values the test controls)."""
  del x
  return jnp.arange(inp.shape[0], dtype=jnp.float32)


def _reversed_ramp_residual(inp, x):
  """Residual B-1-i for sample i."""
  return inp.shape[0] - 1 - _ramp_residual(inp, x)


# cd_full with only the filter or only the range on; the linear CD loss per sample is then
# E_pos - E_neg, filtered or masked, and its batch mean is loss_energy.
_ONLY_FILTER = dict(use_replay_buffer=False, use_energy_schedule=False, use_timestep_range=False)
_ONLY_RANGE = dict(use_replay_buffer=False, use_energy_schedule=False, use_residual_filter=False)


def test_filter_in_the_loss_zeroes_exactly_the_low_residual_samples():
  """Through make_loss_fn: keeping samples 4..9 (residual >= 3.5) and, with the residuals
  reversed, samples 0..3 splits the unfiltered loss in two (dropped samples count 0, kept ones
  in full); the pair's energies do not depend on the filter; the quantile 0.3 keeps 7 of 10."""
  high, _ = _loss_metrics("cd_full", 10, _ramp_residual, residual_tau=3.5, **_ONLY_FILTER)
  low, _ = _loss_metrics("cd_full", 10, _reversed_ramp_residual, residual_tau=5.5,
                         **_ONLY_FILTER)
  np.testing.assert_allclose([high["filter_keep"], low["filter_keep"]], [0.6, 0.4])
  for key in ("energy_pos", "energy_neg"):
    np.testing.assert_allclose(high[key], low[key], rtol=1e-6)
  unfiltered = high["energy_pos"] - high["energy_neg"]
  assert abs(float(high["loss_energy"])) > 1e-3 * abs(float(unfiltered))
  np.testing.assert_allclose(high["loss_energy"] + low["loss_energy"], unfiltered,
                             rtol=1e-5, atol=1e-6 * abs(float(high["energy_pos"])))
  by_quantile, _ = _loss_metrics("cd_full", 10, _ramp_residual, **_ONLY_FILTER)
  np.testing.assert_allclose(by_quantile["filter_keep"], 0.7)


# ------------------------------------------------------------------ timestep mask
def test_timestep_mask_range_0_2_to_0_8():
  """(0.2, 0.8) with T=10 is t in 1..7, both ends included."""
  settings = strategies.LossSettings.from_config(q204.get_config())
  assert settings.energy_loss_timesteps == (1, 7)
  mask = strategies.timestep_mask(settings, jnp.arange(10))
  np.testing.assert_array_equal(mask, [0, 1, 1, 1, 1, 1, 1, 1, 0, 0])
  off = strategies.LossSettings.from_config(q202.get_config())
  assert off.energy_loss_timesteps is None
  np.testing.assert_array_equal(strategies.timestep_mask(off, jnp.arange(10)), np.ones(10))


def test_mask_and_regulariser_on_per_sample_loss():
  """Through make_loss_fn: the ranges (0, 0.4) and (0.5, 1) (t in 0..3 and 4..9) split the
  unmasked loss in two, so the mask zeroes exactly the samples outside its range, after
  alpha (E_pos^2 + E_neg^2) was added per sample: the regulariser adds at least
  alpha (mean E_pos^2 + mean E_neg^2) >= alpha (energy_pos^2 + energy_neg^2)."""
  alpha = 0.5
  full, _ = _loss_metrics("cd_full", 32, energy_reg_weight=alpha, use_timestep_range=False,
                          **_ONLY_RANGE)
  early, _ = _loss_metrics("cd_full", 32, energy_reg_weight=alpha,
                           energy_loss_timestep_range=(0.0, 0.4), **_ONLY_RANGE)
  late, _ = _loss_metrics("cd_full", 32, energy_reg_weight=alpha,
                          energy_loss_timestep_range=(0.5, 1.0), **_ONLY_RANGE)
  plain, _ = _loss_metrics("cd_langevin", 32)
  scale = abs(float(full["loss_energy"]))
  assert 0 < abs(float(early["loss_energy"])) and 0 < abs(float(late["loss_energy"]))
  np.testing.assert_allclose(early["loss_energy"] + late["loss_energy"], full["loss_energy"],
                             rtol=1e-5, atol=1e-6 * scale)
  np.testing.assert_allclose(plain["loss_energy"], plain["energy_pos"] - plain["energy_neg"],
                             rtol=1e-5, atol=1e-6 * abs(float(plain["energy_pos"])))
  for key in ("energy_pos", "energy_neg"):
    np.testing.assert_allclose(full[key], plain[key], rtol=1e-6)
  added = float(full["loss_energy"] - plain["loss_energy"])
  assert added >= alpha * float(plain["energy_pos"] ** 2 + plain["energy_neg"] ** 2) * (1 - 1e-4)


# ------------------------------------------------------------------ warm-up
def test_warmup_weight_at_chosen_steps():
  """max_w * min(1, step / warmup) at steps 0, 1, warmup/2, warmup, 2 warmup."""
  settings = strategies.LossSettings.from_config(q204.get_config())
  assert (settings.energy_loss_warmup_steps, settings.energy_loss_max_weight) == (20_000, 0.05)
  steps = [0, 1, 10_000, 20_000, 40_000]
  got = [float(strategies.energy_weight(settings, jnp.int32(s))) for s in steps]
  np.testing.assert_allclose(got, [0.0, 0.05 / 20_000, 0.025, 0.05, 0.05], rtol=1e-6)
  plain = strategies.LossSettings.from_config(q202.get_config())
  assert float(strategies.energy_weight(plain, jnp.int32(40_000))) == pytest.approx(0.05)
  assert float(strategies.energy_weight(plain, jnp.int32(0))) == pytest.approx(0.05)


def test_warmup_reads_train_state_step():
  """Step k of training (k steps done) weighs the energy loss max_w * k / warmup."""
  setup = _tiny.tiny_setup("cd_full")
  warmup = setup.config.energy_loss_warmup_steps
  max_w = setup.config.energy_loss_max_weight
  step_fn = _tiny.tiny_step("cd_full")
  state = train.init_state(setup)
  weights = []
  for _ in range(4):
    state, metrics = step_fn(state)
    weights.append(float(metrics["energy_weight"]))
  assert int(state.step) == 4
  np.testing.assert_allclose(weights, [max_w * k / warmup for k in range(4)], rtol=1e-6)


# ------------------------------------------------------------------ regulariser
def test_cd_loss_terms_regulariser():
  """energy_reg_weight alpha adds alpha (E_pos^2 + E_neg^2) per sample."""
  e_pos = jnp.asarray([0.5, -1.0, 2.0])
  e_neg = jnp.asarray([1.5, 0.25, 2.0])
  np.testing.assert_allclose(strategies.cd_loss_terms(e_pos, e_neg), [-1.0, -1.25, 0.0])
  np.testing.assert_allclose(strategies.cd_loss_terms(e_pos, e_neg, 0.1),
                             [-1.0 + 0.1 * 2.5, -1.25 + 0.1 * 1.0625, 0.8], rtol=1e-6)


# ------------------------------------------------------------------ replay mixing
MARK = 7.0  # conditions of every stored negative
PREFILL = 4  # negatives stored in each bucket before the step


def _buffer(empty_t=5):
  """Buffer with conditions; PREFILL MARK-conditioned negatives in every bucket except that of
  ``empty_t``; room for 60 more in each."""
  buf = replay.create_sharded(1, _tiny.T, 16, PREFILL + 60, D, condition_dim=D)
  t = jnp.asarray([s for s in range(_tiny.T) if s != empty_t for _ in range(PREFILL)],
                  jnp.int32)
  return replay.add_sharded(buf, jnp.full((t.shape[0], D), 0.3), t,
                            jnp.full((t.shape[0], D), MARK))


def _mixing(mode, empty_t=5):
  """One CD loss on 40 samples (inputs 100 + i) with stored conditions and replay
  probability 1. Returns replay_use, the buffer (1 shard) and, per timestep, the conditions
  the step wrote: MARK where a replayed negative kept its stored input, else >= 100."""
  inp = jnp.broadcast_to(100.0 + jnp.arange(40.0)[:, None], (40, D))
  metrics, buf = _loss_metrics("cd_langevin_replay", 40, buffer=_buffer(empty_t), inp=inp,
                               mining_opt_steps=1, replay_sample_prob=1.0, replay_mixing=mode,
                               replay_store_condition=True)
  buf = jax.tree_util.tree_map(lambda a: a[0], buf)
  written = {}
  for s in range(_tiny.T):
    row = int(buf.slot_of_timestep[s])
    start = 0 if s == empty_t else PREFILL
    written[s] = np.asarray(buf.conditions[row, start:int(buf.count[row]), 0])
  return float(metrics["replay_use"]), written


def test_sample_mixing_replays_only_non_empty_buckets():
  """Per-sample mixing: samples of filled buckets restart from replay (their stored input comes
  back), the samples of the empty bucket start fresh (their own input is stored)."""
  use, written = _mixing("sample")
  fresh = written.pop(5)
  assert fresh.size > 0 and np.all(fresh >= 100.0)
  assert use == pytest.approx(1 - fresh.size / 40)
  assert sum(w.size for w in written.values()) == 40 - fresh.size
  for s, conditions in written.items():
    np.testing.assert_array_equal(conditions, MARK, err_msg=f"t={s}")


def test_batch_mixing_is_all_or_nothing():
  """'batch' mode: one empty requested bucket means no replay at all; none empty means all."""
  use, written = _mixing("batch")
  assert written[5].size > 0 and use == 0.0
  assert all(np.all(w >= 100.0) for w in written.values())
  use_full, written_full = _mixing("batch", empty_t=-1)
  assert use_full == 1.0
  assert all(np.all(w == MARK) for w in written_full.values())


# ------------------------------------------------------------------ config -> settings
def test_mining_keys_reach_loss_settings():
  """The guide's JSON keys mining_opt_steps / mining_noise_scale drive the chain."""
  s = strategies.LossSettings.from_config(q204.get_config())
  assert (s.mining_opt_steps, s.mining_noise_scale) == (10, 1.5)
  assert s.use_replay_buffer and s.use_residual_filter and s.use_energy_schedule
  assert s.residual_filter_quantile == 0.3 and s.residual_tau is None
  assert s.replay_sample_prob == 0.95 and s.mining_strategy == "cd_full"
  c = q204.get_config()
  c.mining_opt_steps, c.mining_noise_scale = 3, 1.2
  s = strategies.LossSettings.from_config(c)
  assert (s.mining_opt_steps, s.mining_noise_scale) == (3, 1.2)
  s202 = strategies.LossSettings.from_config(q202.get_config())
  assert not (s202.use_replay_buffer or s202.use_residual_filter or s202.use_energy_schedule)
  assert s202.energy_loss_weight == 0.05 and s202.mining_opt_steps == 10


def _first_step_metrics(config):
  setup = train.build_setup(config)
  return train.jit_train_step(setup)(train.init_state(setup))[1]


def test_only_ired_descends():
  """nce_random is the NCE without descent (schema.STRATEGY_REGISTRY): it does not read
  ired_descent_steps, and its negatives differ from ired's only by that descent."""
  ired = _tiny.tiny_step("ired")(train.init_state(_tiny.tiny_setup("ired")))[1]
  nce = _tiny.tiny_step("nce_random")(train.init_state(_tiny.tiny_setup("nce_random")))[1]
  more = _first_step_metrics(_tiny.tiny_config("nce_random", ired_descent_steps=5))
  for key in ("loss", "energy_pos", "energy_neg", "grad_norm"):
    np.testing.assert_array_equal(more[key], nce[key], err_msg=key)
  np.testing.assert_allclose(ired["energy_pos"], nce["energy_pos"], rtol=1e-6)
  assert float(ired["energy_neg"]) != float(nce["energy_neg"])


def test_original_clamp_bounds_the_batch_by_sample_zero():
  """ired_descent_clamp='first_sample' (the original's) clamps every negative to sample 0's
  box: a batch sharing one t is unchanged; with sample 0's box the tightest (t = 9) the
  negatives' energy changes, and it depends on which sample comes first, not on the order
  of the others (the loss on given draws, the samples reordered with theirs)."""
  _, params, inp, x0 = _small_setup(8)
  eps, eps_neg = jax.random.normal(jax.random.PRNGKey(3), (2, 8, D))

  @functools.lru_cache(maxsize=None)
  def loss_fn(clamp):
    settings = strategies.LossSettings.from_config(
        _tiny.tiny_config("ired", ired_descent_clamp=clamp))
    return jax.jit(strategies.make_noise_loss_fn(_tiny.small_energy()[0], _tiny.schedule(),
                                                 settings))

  def energy_neg(clamp, t, order=tuple(range(8))):
    order = np.asarray(order)
    _, (metrics, _) = loss_fn(clamp)(params, inp[order], x0[order], jnp.asarray(t)[order],
                                     eps[order], strategies.NegativeNoise(eps_neg[order]),
                                     jnp.int32(0), None)
    return float(metrics["energy_neg"])

  shared = [3] * 8
  assert energy_neg("first_sample", shared) == energy_neg("per_sample", shared)
  mixed = [9, 0, 0, 1, 1, 2, 2, 3]
  original = energy_neg("first_sample", mixed)
  assert original != pytest.approx(energy_neg("per_sample", mixed), rel=1e-3)
  others_reversed = [0, 7, 6, 5, 4, 3, 2, 1]
  assert energy_neg("first_sample", mixed, others_reversed) == pytest.approx(original, rel=1e-6)
  assert energy_neg("first_sample", mixed, [1, 0, 2, 3, 4, 5, 6, 7]) != pytest.approx(
      original, rel=1e-3)


def test_sampler_state_target_denoises_to_the_truth():
  """eps* turns the sampler's state back into the truth, and is 0 at the truth's own state."""
  schedule = _tiny.schedule()
  k1, k2 = jax.random.split(jax.random.PRNGKey(4))
  x0_hat, x0 = jax.random.normal(k1, (10, D)), jax.random.normal(k2, (10, D))
  t = jnp.arange(10, dtype=jnp.int32)
  y, target = strategies.sampler_state_target(schedule, x0_hat, x0, t)
  np.testing.assert_allclose(schedule.predict_start_from_noise(y, t, target), x0, atol=2e-5)
  np.testing.assert_allclose(y, schedule.sqrt_alphas_cumprod[t][:, None] * x0_hat, rtol=1e-6)
  np.testing.assert_array_equal(strategies.sampler_state_target(schedule, x0, x0, t)[1], 0.0)


def test_sampler_state_loss_trains_the_score_not_the_answer_it_starts_from():
  """The term's gradient is that with x0_hat held constant: no gradient through the
  model's answer that defines the state."""
  fn, params, inp, x0 = _small_setup(8)
  schedule = _tiny.schedule()
  t = jnp.asarray([0, 1, 2, 3, 4, 5, 6, 9], jnp.int32)
  x_t = schedule.q_sample(x0, t, jax.random.normal(jax.random.PRNGKey(5), x0.shape))

  def answer(p):
    eps = model.score(fn, p, inp, x_t, t)
    return strategies.clip_answer(schedule.predict_start_from_noise(x_t, t, eps))

  def term(p, x0_hat):
    return jnp.mean(strategies.sampler_state_loss(fn, p, schedule, fn.condition(p, inp, t),
                                                  x0_hat, x0, t))

  through = jax.grad(lambda p: term(p, answer(p)))(params)
  held = jax.grad(lambda p: term(p, np.asarray(answer(params))))(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         through, held)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(held))


@pytest.mark.parametrize("strategy", ["none", "ired"])
def test_sampler_state_weight_adds_its_term_to_the_loss(strategy):
  off, _ = _loss_metrics(strategy, 16)
  on, _ = _loss_metrics(strategy, 16, sampler_state_weight=0.5)
  assert "loss_sampler_state" not in off and float(on["loss_sampler_state"]) > 0
  np.testing.assert_allclose(on["loss"], off["loss"] + 0.5 * on["loss_sampler_state"], rtol=1e-5)
  np.testing.assert_array_equal(on["loss_mse"], off["loss_mse"])
