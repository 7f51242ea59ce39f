"""Loss pieces of the mining strategies: filter, mask, warm-up, regulariser, replay mixing."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, q202, q204
from ired_cd import replay, strategies, train
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


@functools.partial(jax.jit, static_argnames=("settings", "residual_fn"))
def _cd_jit(params, inp, x0, t, key, buffer, settings, residual_fn):
  fn = _tiny.small_energy()[0]
  return strategies._cd_energy_loss(fn, params, _tiny.schedule(), settings, residual_fn, inp,
                                    fn.condition(params, inp, t), x0, t, key, jnp.int32(0),
                                    buffer)


def _cd_loss(settings, t, residual_fn=None, buffer=None, inp=None):
  """Per-sample CD loss, weight, metrics and buffer of ``_cd_energy_loss`` at the given t."""
  _, params, inp_, x0 = _small_setup(t.shape[0])
  inp = inp_ if inp is None else inp
  return _cd_jit(params, inp, x0, t, jax.random.PRNGKey(1), buffer, settings, residual_fn)


def _ramp_residual(inp, x):
  """Residual i for sample i (an oracle whose values the test controls)."""
  del x
  return jnp.arange(inp.shape[0], dtype=jnp.float32)


def test_filter_in_the_loss_zeroes_exactly_the_low_residual_samples():
  """In the CD loss the filter zeroes the samples with residual < tau and leaves the rest as is."""
  t = jnp.full((10,), 4, jnp.int32)
  by_quantile = strategies.LossSettings("cd_full", mining_opt_steps=2, use_residual_filter=True)
  loss_tau, _, metrics, _ = _cd_loss(dataclasses.replace(by_quantile, residual_tau=3.5), t,
                                     _ramp_residual)
  loss_tau = np.asarray(loss_tau)
  np.testing.assert_array_equal(loss_tau[:4], 0.0)
  assert np.all(loss_tau[4:] != 0.0)
  np.testing.assert_allclose(metrics["filter_keep"], 0.6)
  loss_q, _, metrics_q, _ = _cd_loss(by_quantile, t, _ramp_residual)  # quantile 0.3 -> 2.7
  loss_q = np.asarray(loss_q)
  np.testing.assert_array_equal(loss_q[:3], 0.0)
  assert loss_q[3] != 0.0
  np.testing.assert_array_equal(loss_q[4:], loss_tau[4:])
  np.testing.assert_allclose(metrics_q["filter_keep"], 0.7)


# ------------------------------------------------------------------ timestep mask
def test_timestep_mask_range_0_2_to_0_8():
  """(0.2, 0.8) with T=10 is t in 1..7, both ends included."""
  settings = strategies.LossSettings.from_config(q204.get_config())
  assert settings.energy_loss_timestep_range == (1, 7)
  mask = strategies.timestep_mask(settings, jnp.arange(10))
  np.testing.assert_array_equal(mask, [0, 1, 1, 1, 1, 1, 1, 1, 0, 0])
  off = strategies.LossSettings.from_config(q202.get_config())
  assert off.energy_loss_timestep_range is None
  np.testing.assert_array_equal(strategies.timestep_mask(off, jnp.arange(10)), np.ones(10))


def test_mask_and_regulariser_on_per_sample_loss():
  """alpha (E_pos^2 + E_neg^2) is added per sample before the mask: masked t contribute 0."""
  t = jnp.arange(10, dtype=jnp.int32)
  plain, _, metrics, _ = _cd_loss(strategies.LossSettings("cd_langevin", mining_opt_steps=2), t)
  masked, _, _, _ = _cd_loss(strategies.LossSettings(
      "cd_full", mining_opt_steps=2, energy_loss_timestep_range=(1, 7), energy_reg_weight=0.5), t)
  plain, masked = np.asarray(plain), np.asarray(masked)
  np.testing.assert_allclose(np.mean(plain), metrics["energy_pos"] - metrics["energy_neg"],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(masked[[0, 8, 9]], 0.0)
  squares = (masked[1:8] - plain[1:8]) / 0.5  # E_pos^2 + E_neg^2 >= (E_pos - E_neg)^2 / 2
  assert np.all(squares > 0)
  assert np.all(squares >= 0.5 * plain[1:8] ** 2 * (1 - 1e-4))


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


def _buffer(empty_t=5):
  """Buffer with conditions; every bucket full (MARK conditions) except that of ``empty_t``."""
  buf = replay.create_sharded(1, _tiny.T, 16, 4, D, condition_dim=D)
  t = jnp.asarray([s for s in range(_tiny.T) if s != empty_t for _ in range(4)], jnp.int32)
  return replay.add_sharded(buf, jnp.full((t.shape[0], D), 0.3), t,
                            jnp.full((t.shape[0], D), MARK))


def _mixing(mode, empty_t=5):
  """Runs the CD loss at t = 0..9 twice over with stored conditions; inputs 100 + i."""
  t = jnp.tile(jnp.arange(_tiny.T, dtype=jnp.int32), 2)
  inp = jnp.broadcast_to(100.0 + jnp.arange(20.0)[:, None], (20, D))
  settings = strategies.LossSettings("cd_langevin_replay", mining_opt_steps=1, use_replay_buffer=True,
                                     replay_sample_prob=1.0, replay_mixing=mode,
                                     replay_store_condition=True)
  _, _, metrics, buf = _cd_loss(settings, t, buffer=_buffer(empty_t), inp=inp)
  return float(metrics["replay_use"]), jax.tree_util.tree_map(lambda a: a[0], buf)  # 1 shard


def test_sample_mixing_replays_only_non_empty_buckets():
  """Per-sample mixing: samples of filled buckets restart from replay (their stored input comes
  back), the two samples of the empty bucket start fresh (their own input is stored)."""
  use, buf = _mixing("sample")
  assert use == pytest.approx(18 / 20)
  row = int(buf.slot_of_timestep[5])
  assert int(buf.count[row]) == 2
  np.testing.assert_array_equal(buf.conditions[row, :2, 0], [105.0, 115.0])
  for s in range(_tiny.T):
    if s != 5:
      r = int(buf.slot_of_timestep[s])
      np.testing.assert_array_equal(buf.conditions[r, :2], MARK)  # newly written: replayed


def test_batch_mixing_is_all_or_nothing():
  """'batch' mode: one empty requested bucket means no replay at all; none empty means all."""
  use, buf = _mixing("batch")
  assert use == 0.0
  for s in range(_tiny.T):
    if s != 5:
      r = int(buf.slot_of_timestep[s])
      np.testing.assert_array_equal(buf.conditions[r, :2, 0], [100.0 + s, 110.0 + s])  # fresh
  use_full, _ = _mixing("batch", empty_t=-1)
  assert use_full == 1.0


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


def test_non_cd_strategies_ignore_cd_switches():
  """ired / nce_random never use replay, filter or schedule; only ired descends."""
  c = base.get_config()
  c.use_replay_buffer = c.use_residual_filter = c.use_energy_schedule = True
  c.use_timestep_range = True
  for strategy, steps in (("ired", 2), ("nce_random", 0), ("none", 0)):
    c.mining_strategy = strategy
    s = strategies.LossSettings.from_config(c)
    assert not (s.use_replay_buffer or s.use_residual_filter or s.use_energy_schedule)
    assert s.energy_loss_timestep_range is None and s.ired_descent_steps == steps
