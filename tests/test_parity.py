"""Numerical parity with the PyTorch reference's golden arrays (tests/golden)."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, q204
from ired_cd import descent, langevin, model, replay, sampler, strategies, tasks, train
from ired_cd.diffusion import take
from ired_cd.model import EnergyMLP
from tests.conftest import golden

INVERSE = tasks.get_task("inverse")

RTOL = 1e-5


def assert_close(actual, desired, rtol=RTOL, atol=None):
  desired = np.asarray(desired)
  scale = np.max(np.abs(desired)) if atol is None else 1.0
  np.testing.assert_allclose(np.asarray(actual), desired, rtol=rtol,
                             atol=(rtol * scale if atol is None else atol))


def test_schedule(schedule):
  g = golden("schedule")
  for name, value in g.items():
    assert_close(getattr(schedule, name), value, rtol=1e-6)
  np.testing.assert_allclose(
      schedule.opt_step_size,
      [0.167, 0.237, 0.269, 0.298, 0.334, 0.382, 0.453, 0.564, 0.753, 0.999], atol=6e-4)


@pytest.mark.parametrize("table", [True, False], ids=["film_table", "per_sample"])
@pytest.mark.parametrize("calls", [1, 1000], ids=["direct", "gram"])
def test_energy_and_score(golden_params, table, calls):
  g = golden("energy")
  fn = model.EnergyFunction(EnergyMLP(out_dim=400, num_timesteps=10 if table else None))
  fn = fn.sharing(calls)
  cond = fn.condition(golden_params, g["inp"], g["t"])
  e, s = model.conditioned_energy_and_score(fn, golden_params, cond, g["y"])
  assert_close(e, g["energy"][:, 0])
  assert_close(s, g["grad"])
  assert_close(model.conditioned_score(fn, golden_params, cond, g["y"]), g["grad"])


def test_time_embedding(golden_params):
  g = golden("energy")
  m = EnergyMLP(out_dim=400)
  assert_close(model.sinusoidal_embedding(jnp.asarray(g["t"]), 128), g["sinusoidal"], rtol=1e-6)
  temb = m.apply({"params": golden_params}, jnp.asarray(g["t"]), method=EnergyMLP.time_embedding)
  assert_close(temb, g["time_embedding"])


def test_denoising_loss(golden_params, energy_fn, schedule):
  g = golden("loss_mse")
  loss, pred, x_t = strategies.denoising_loss(energy_fn, golden_params, schedule, g["inp"],
                                              g["x0"], g["t"], g["noise"])
  assert_close(x_t, g["x_t"])
  assert_close(pred, g["pred"])
  assert_close(loss, g["loss_mse"])


def test_descent_training_case(golden_params, energy_fn, schedule):
  g = golden("descent")
  t = jnp.asarray(g["t"])
  rule = schedule.descent_rule(t)
  y = descent.energy_descent(energy_fn, golden_params, g["inp"], g["y0"], t, 2,
                             rule.step_size, rule.bound)
  assert_close(y, g["y_after_2_steps"], rtol=1e-4)


def test_descent_sampler_case(golden_params, energy_fn, schedule):
  g = golden("descent")
  t = jnp.asarray(g["t_shared"])
  y = descent.energy_descent(energy_fn, golden_params, g["inp"], g["y0_shared"], t, 5,
                             schedule.opt_step_size[4], 2 * schedule.sqrt_alphas_cumprod[4])
  assert_close(y, g["y_after_5_steps_shared"], rtol=1e-4)


def test_ired_loss(golden_params, energy_fn, schedule):
  """The library's ired loss on the reference's timesteps and noises (noise2: the NCE's)."""
  g = golden("loss_ired")
  loss_fn = strategies.make_noise_loss_fn(
      energy_fn, schedule, strategies.LossSettings.from_config(base.baseline("ired")))
  loss, (metrics, _) = loss_fn(golden_params, g["inp"], g["x0"], jnp.asarray(g["t"]), g["noise"],
                               strategies.NegativeNoise(g["noise2"]), jnp.int32(0), None)
  assert_close(metrics["loss_mse"], np.mean(golden("loss_mse")["loss_mse"]))
  assert_close(metrics["energy_pos"], np.mean(g["energy_pos"]))
  assert_close(metrics["energy_neg"], np.mean(g["energy_neg"]))
  assert_close(metrics["loss_energy"], np.mean(g["loss_energy"]))
  assert_close(loss, g["loss"])


def test_langevin_chain(golden_params, energy_fn, schedule):
  g = golden("langevin")
  y, stats = langevin.langevin_chain(energy_fn, golden_params, g["inp"], g["x_init"],
                                     jnp.asarray(g["t"]), g["noises"], schedule)
  assert_close(y, g["x_final"], rtol=1e-4)
  assert np.isfinite(float(stats.displacement))


def test_cd_loss_pieces(golden_params, energy_fn, schedule):
  g = golden("cd_loss")
  t = jnp.asarray(g["t"])
  e_pos = energy_fn(golden_params, g["inp"], g["x_pos"], t)[:, 0]
  e_neg = energy_fn(golden_params, g["inp"], g["x_neg"], t)[:, 0]
  assert_close(e_pos, g["energy_pos"][:, 0])
  assert_close(e_neg, g["energy_neg"][:, 0])
  x0 = schedule.x0_estimate(g["x_neg"], t)
  assert_close(x0, g["x_neg_x0"])
  res = INVERSE.residual(jnp.asarray(g["inp"]), x0)
  assert_close(res, g["residual"])
  assert np.max(np.asarray(INVERSE.residual(g["inp"], g["x0"]))) < 1e-3
  np.testing.assert_allclose(INVERSE.residual(g["inp"], g["x0"]),
                             g["residual_of_true_inverse"], atol=1e-4)
  assert_close(jnp.quantile(jnp.asarray(g["residual"]), 0.3), g["quantile_0_3"])
  keep = strategies.residual_keep(jnp.asarray(g["residual"]), 0.3, None)
  np.testing.assert_array_equal(keep, g["keep"])
  settings = strategies.LossSettings.from_config(q204.get_config())  # range (1, 7), warm-up 20k
  assert (settings.energy_loss_timesteps, settings.energy_loss_warmup_steps,
          settings.energy_loss_max_weight) == ((1, 7), 20_000, 0.05)
  mask = strategies.timestep_mask(settings, t)
  np.testing.assert_array_equal(mask, g["timestep_mask"])
  weights = [strategies.energy_weight(settings, jnp.asarray(s)) for s in g["warmup_steps"]]
  assert_close(jnp.stack(weights), g["warmup_weight"], rtol=1e-6)


def standard_normal_of(schedule, x, x0, t, scale=1.0):
  """The draw n with x = q_sample(x0, t, scale n): the noise the reference made x with."""
  t = jnp.asarray(t)
  return (x - take(schedule.sqrt_alphas_cumprod, t) * x0) / (
      scale * take(schedule.sqrt_one_minus_alphas_cumprod, t))


def test_cd_loss(golden_params, energy_fn, schedule):
  """The library's cd_full loss (the guide's CD term, without the replay buffer) on the
  reference's draws, halfway through the warm-up: the positives' and the chain's start
  noise read back from x_pos and from langevin.npz's x_init, whose chain ends at x_neg."""
  g, chain = golden("cd_loss"), golden("langevin")
  config = base.run_config(q204.get_config("guide"), use_replay_buffer=False)
  negatives = strategies.NegativeNoise(
      standard_normal_of(schedule, g["x_pos"], g["x0"], g["t"]),
      standard_normal_of(schedule, chain["x_init"], g["x0"], g["t"], config.mining_noise_scale),
      chain["noises"])
  loss_fn = strategies.make_noise_loss_fn(energy_fn, schedule,
                                          strategies.LossSettings.from_config(config),
                                          INVERSE.residual)
  step, weight = g["warmup_steps"][3], g["warmup_weight"][3]
  loss, (metrics, _) = loss_fn(golden_params, g["inp"], g["x0"], jnp.asarray(g["t"]),
                               golden("loss_mse")["noise"], negatives, jnp.int32(step), None)
  assert_close(metrics["energy_pos"], np.mean(g["energy_pos"]))
  assert_close(metrics["energy_neg"], np.mean(g["energy_neg"]))
  assert metrics["filter_keep"] == np.mean(g["keep"])
  assert_close(metrics["loss_energy"], np.mean(g["loss_energy_masked"]))
  assert_close(metrics["energy_weight"], weight, rtol=1e-6)
  assert_close(loss, np.mean(golden("loss_mse")["loss_mse"]) + weight * np.mean(
      g["loss_energy_masked"]))


def test_sampler(golden_params, energy_fn, schedule):
  g = golden("sampler")
  run = lambda k, x0: sampler.ired_sample(energy_fn, golden_params, g["inp"], g["y_init"],  # noqa
                                          schedule, k, return_x0=x0)
  assert_close(run(0, False), g["out_inner0"], rtol=1e-4)
  for out, want in ((run(5, False), g["out_inner5"]), (run(5, True), g["out_inner5_x0"])):
    # Accept/reject decisions may flip on round-off where E(y') ~ E(y): most samples match.
    close = np.all(np.isclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()), axis=1)
    assert close.mean() >= 0.9, f"only {close.mean():.0%} of samples match"


def test_bucket_formula():
  g = golden("schedules_misc")
  np.testing.assert_array_equal(replay.bucket_of_timestep(np.arange(10), 10, 16),
                                g["bucket_of_t_T10_B16"])


def test_ema_schedule():
  g = golden("schedules_misc")
  decay = train.ema_decay(jnp.asarray(g["ema_call_index"]))
  np.testing.assert_allclose(decay, g["ema_decay"], rtol=1e-6)
