"""Training losses of every mining strategy, as one pure function of (params, batch, key).

Each strategy's energy term, descent and stage switches are its entry in
``schema.STRATEGY_REGISTRY``:

  none               denoising MSE only: mean((dE/dy(inp, x_t, t) - eps)^2)
  nce_random         + the original NCE on random negatives q_sample(x0, t, 3 eps')
  ired               + 2 energy-descent steps on those negatives (the paper)
  cd_langevin        + CD loss E_pos - E_neg on short-run Langevin negatives (q202)
  cd_langevin_replay + timestep-bucketed persistent replay buffer (q203)
  cd_full            + residual filter, warm-up and timestep-range mask (q204)

Choices where the guide is open (each tested, each in the README):
  * The JSON keys ``mining_opt_steps``/``mining_noise_scale`` are what the chain
    reads (the guide's code reads ``opt_steps``/``noise_scale`` and would fall
    back to 10 / 1.0).
  * Warm-up reads the optimiser steps completed before this one (the train
    state's step); the guide's ``global_step`` is never set, so read literally
    the weight would stay 0.
  * Replay-or-fresh is decided per sample with probability replay_sample_prob
    where the sample's bucket is non-empty (Du & Mordatch's 95/5 mixing);
    ``replay_mixing='batch'`` is the guide's all-or-nothing per batch (replay
    only if every requested bucket is non-empty).
  * ``energy_reg_weight`` alpha adds alpha (E_pos^2 + E_neg^2) to each sample's
    energy loss before the filter, mask and weight are applied.
  * Energy descent in training clamps each sample with its own bound
    2 sqrt(abar_t); ``ired_descent_clamp='first_sample'`` is the original's
    sample 0's bound for the whole batch.

A candidate beside every strategy's denoising loss (off by default):
  * ``sampler_state_weight`` w > 0 adds w * sampler_state_loss: the score at the
    sampler's noise-free state sqrt(abar_t) x0_hat, asked for the noise that leads
    to the truth (docs/landscape.md section 6).

Stabilisers of the CD energy term (off, i.e. the guide's literal values, by
default; ``configs/cd_stable.py`` turns on the ones the study selected):
  * ``cd_loss='logistic'``: softplus(E_pos - E_neg), bounded below like IRED's
    own NCE, instead of the unbounded linear E_pos - E_neg. ``cd_margin`` m > 0
    makes it softplus(E_pos - E_neg + m): the term keeps pushing until the gap
    exceeds m by a few units, where the plain form fades from a gap of ~3.
  * ``cd_negatives='renoised'``: each chain's answer x0_estimate(x_neg) is put
    back at the positive's own noise, q_sample(x0_hat, t, eps_pos), so the pair
    differs in the answer only (as in IRED's NCE), never in the noise.
    ``'denoised'`` does the same with the model's own denoised answer
    predict_start_from_noise(x_neg, t, dE/dy(x_neg)): the negative is the answer
    the model would give from the chain's sample, so a wrong one is a hard
    negative and the residual filter (which then scores that answer) drops the
    right ones.
  * The energy term's gradient can be separated from the denoising gradient
    (``energy_params``, see ``make_loss_fn``) and projected or capped against
    it in the train step (train.combine_gradients).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ired_cd import schema
from ired_cd import langevin, replay
from ired_cd import model as model_lib
from ired_cd.descent import energy_descent
from ired_cd.diffusion import Schedule, clip_answer, take


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """The static (Python) settings the loss of one strategy reads, built from a validated
  config by ``from_config``: the config keys of the same names, except
  ``energy_loss_timesteps``."""

  mining_strategy: str
  mining_noise_scale: float  # CD chain start q_sample(x0, t, scale eps)
  mining_opt_steps: int
  langevin_sigma_multiplier: float
  langevin_grad_clip: Optional[float]  # None: no clip (the config's 0)
  energy_loss_weight: float
  energy_reg_weight: float
  use_replay_buffer: bool
  replay_sample_prob: float
  replay_mixing: str
  replay_store_condition: bool
  use_residual_filter: bool
  residual_filter_quantile: float
  residual_tau: Optional[float]
  use_energy_schedule: bool
  energy_loss_warmup_steps: int
  energy_loss_max_weight: float
  # Inclusive integer (tmin, tmax) of the config's fractions energy_loss_timestep_range,
  # None without use_timestep_range.
  energy_loss_timesteps: Optional[tuple]
  cd_loss: str  # linear: E_pos - E_neg | logistic: softplus(E_pos - E_neg + margin)
  cd_margin: float
  cd_negatives: str  # chain: x_t-space chain output | renoised | denoised: module doc
  energy_grad_surgery: str  # none | project (train.combine_gradients)
  energy_grad_max_ratio: float  # > 0: cap ||g_energy|| at this times ||g_denoise||
  log_grad_conflict: bool  # log both gradients' norms and cosine
  ired_noise_scale: float
  ired_descent_steps: int
  ired_descent_clamp: str  # per_sample | first_sample (the original's)
  nce_loss_weight: float
  sampler_state_weight: float  # > 0: sampler_state_loss beside the denoising MSE

  @classmethod
  def from_config(cls, c, task=None) -> "LossSettings":
    """From a config that ``schema.validate`` accepts (the switches its strategy ignores off).
    ``task``: the config's (tasks.from_config); a task with a ``filter_threshold`` (its
    verifier) sets ``residual_tau``."""
    settings = {field.name: c[field.name] for field in dataclasses.fields(cls)
                if field.name != "energy_loss_timesteps"}
    if task is not None and task.filter_threshold is not None:
      settings["residual_tau"] = task.filter_threshold
    settings.update(
        langevin_grad_clip=c.langevin_grad_clip or None,
        energy_loss_timesteps=(
            schema.timestep_range(c.energy_loss_timestep_range, c.diffusion_steps)
            if c.use_timestep_range else None))
    return cls(**settings)

  @property
  def strategy(self) -> schema.Strategy:
    """The registry's entry of ``mining_strategy``."""
    return schema.STRATEGY_REGISTRY[self.mining_strategy]


class NegativeNoise(NamedTuple):
  """The energy term's standard normals, given instead of drawn from a key (as the PyTorch
  reference's golden arrays give them). ``eps`` (B, D): the positives' noise (the NCE's
  negatives start from ired_noise_scale times it); CD only: ``init`` (B, D), the chain's start
  noise (times mining_noise_scale), and ``chain`` (K, B, D), K Langevin steps' noise. The
  replay buffer draws from a key: a given noise takes none."""

  eps: jnp.ndarray
  init: Optional[jnp.ndarray] = None
  chain: Optional[jnp.ndarray] = None


def denoising_loss(energy_fn, params, schedule: Schedule, inp, x0, t, eps, cond=None):
  """Per-sample MSE between the score at x_t = q_sample(x0, t, eps) and eps.

  Returns (loss_mse (B,), score (B, D), x_t (B, D)); differentiable w.r.t.
  params through the score (a gradient of a gradient). ``cond``: the batch's
  ``energy_fn.condition(params, inp, t)`` when the caller shares it.
  """
  x_t = schedule.q_sample(x0, t, eps)
  if cond is None:
    cond = energy_fn.condition(params, inp, t)
  pred = model_lib.conditioned_score(energy_fn, params, cond, x_t)
  return jnp.mean(jnp.square(pred - eps), axis=-1), pred, x_t


def sampler_state_target(schedule: Schedule, x0_hat, x0, t):
  """The sampler's noise-free state y = sqrt(abar_t) x0_hat and the noise eps* with
  predict_start_from_noise(y, t, eps*) = x0: eps* = sqrt(abar_t) (x0_hat - x0) / sqrt(1 - abar_t).
  x0_hat, x0: (B, D); t: (B,). Returns (y, eps*), both (B, D)."""
  y = take(schedule.sqrt_alphas_cumprod, t) * x0_hat
  target = (y - take(schedule.sqrt_alphas_cumprod, t) * x0) / take(
      schedule.sqrt_one_minus_alphas_cumprod, t)
  return y, target


def sampler_state_loss(energy_fn, params, schedule: Schedule, cond, x0_hat, x0, t):
  """Per-sample MSE (B,) between the score at the sampler's state and eps* (sampler_state_target).

  The sampler scores noise-free states sqrt(abar_t) x0_hat, which the denoising loss
  (Gaussian x_t only) never shows the model; its fixed points there are where the score
  is 0. This term asks the score at those states to point at the truth, so that the
  truth is the fixed point. ``x0_hat`` (the model's answer from x_t) gets no gradient.
  """
  y, target = sampler_state_target(schedule, jax.lax.stop_gradient(x0_hat), x0, t)
  pred = model_lib.conditioned_score(energy_fn, params, cond, y)
  return jnp.mean(jnp.square(pred - target), axis=-1)


def energy_weight(settings: LossSettings, step):
  """Scalar weight of the energy loss at ``step`` optimiser steps completed."""
  if not settings.use_energy_schedule:
    return jnp.asarray(settings.energy_loss_weight, jnp.float32)
  progress = jnp.minimum(1.0, step.astype(jnp.float32) / settings.energy_loss_warmup_steps)
  return settings.energy_loss_max_weight * progress


def timestep_mask(settings: LossSettings, t):
  """1.0 where tmin <= t <= tmax (the guide's integer range), else 0.  (B,)."""
  if settings.energy_loss_timesteps is None:
    return jnp.ones(t.shape, jnp.float32)
  lo, hi = settings.energy_loss_timesteps
  return ((t >= lo) & (t <= hi)).astype(jnp.float32)


def residual_keep(residuals, quantile: float, tau: Optional[float]):
  """Keeps negatives whose residual is >= tau (fixed, or the batch quantile).  (B,) float."""
  threshold = jnp.quantile(residuals, quantile) if tau is None else jnp.asarray(tau)
  return (residuals >= threshold).astype(jnp.float32)


def negative_keep(settings: LossSettings, residual_fn, inputs, answers):
  """The residual filter (guide section E): 1.0 for the negatives it keeps, 0.0 for those
  whose answer (B, D) is too good to push up: residual below the fixed ``residual_tau`` (a
  discrete task's verifier: 0 violations, a right answer), or below the batch quantile."""
  return residual_keep(residual_fn(inputs, answers), settings.residual_filter_quantile,
                       settings.residual_tau)


def cd_loss_terms(e_pos, e_neg, reg_weight: float = 0.0, form: str = "linear",
                  margin: float = 0.0):
  """Per-sample CD loss (+ alpha (E_pos^2 + E_neg^2)).  (B,) each.

  form: ``linear`` E_pos - E_neg (the guide; unbounded below, so nothing stops
  the gap from growing), or ``logistic`` softplus(E_pos - E_neg + margin)
  (bounded below by 0; its gradient fades once E_neg - E_pos exceeds the
  margin by a few units).
  """
  out = e_pos - e_neg if form == "linear" else jax.nn.softplus(e_pos - e_neg + margin)
  if reg_weight:
    out = out + reg_weight * (jnp.square(e_pos) + jnp.square(e_neg))
  return out


def _paired_energies(energy_fn, params, inp, x_pos, x_neg, t, inp_neg=None):
  """E_pos, E_neg, two (B,) arrays, from two B-row calls sharing one conditioning.

  ``inp_neg``: the negatives' own inputs where they carry them
  (replay_store_condition). Two B-row calls keep the batch's sharding as it is
  and were faster than one call on 2B interleaved rows. The conditioning is
  computed here, not taken from the denoising loss: sharing it across both
  losses' gradients was slower (both measurements: docs/speed.md).
  """
  cond = energy_fn.condition(params, inp, t)
  cond_neg = cond if inp_neg is None else energy_fn.condition(params, inp_neg, t)
  return (energy_fn.energy_given(params, cond, x_pos)[:, 0],
          energy_fn.energy_given(params, cond_neg, x_neg)[:, 0])


def _nce_energy_loss(energy_fn, params, schedule, settings, inp, cond, x0, t, negatives,
                     energy_params=None):
  """The original's NCE: softplus(E_pos - E_neg), negatives from 3x noise (+ descent).
  ``negatives``: a key, or a NegativeNoise."""
  energy_params = params if energy_params is None else energy_params
  if isinstance(negatives, NegativeNoise):
    eps = negatives.eps
  else:
    eps = jax.random.normal(negatives, x0.shape)
  x_pos = schedule.q_sample(x0, t, eps)
  x_neg = schedule.q_sample(x0, t, settings.ired_noise_scale * eps)
  if settings.strategy.descent:
    rule = schedule.descent_rule(t)
    bound = rule.bound[0] if settings.ired_descent_clamp == "first_sample" else rule.bound
    x_neg = energy_descent(energy_fn, params, inp, x_neg, t, settings.ired_descent_steps,
                           rule.step_size, bound, cond)
  x_neg = schedule.q_sample(schedule.x0_estimate(x_neg, t), t, eps)
  e_pos, e_neg = _paired_energies(energy_fn, energy_params, inp, x_pos, x_neg, t)
  loss = jax.nn.softplus(e_pos - e_neg)
  if settings.energy_reg_weight:
    loss = loss + settings.energy_reg_weight * (jnp.square(e_pos) + jnp.square(e_neg))
  metrics = dict(energy_pos=jnp.mean(e_pos), energy_neg=jnp.mean(e_neg))
  return loss, settings.nce_loss_weight, metrics


def _cd_energy_loss(energy_fn, params, schedule, settings, residual_fn, inp, cond, x0, t,
                    negatives, step, buffer, energy_params=None):
  """Guide sections A-F. Returns (per-sample loss (B,), weight, metrics, buffer).

  ``negatives``: a key, or a NegativeNoise (without the replay buffer).
  ``energy_params``: the parameters E_pos and E_neg are evaluated with (default
  ``params``; the chain always runs on ``params`` with gradients stopped).
  """
  energy_params = params if energy_params is None else energy_params
  given = isinstance(negatives, NegativeNoise)
  if given and settings.use_replay_buffer:
    raise ValueError("the replay buffer draws from a key: a NegativeNoise takes no replay buffer")
  if not given:
    k_pos, k_init, k_mix, k_replay, k_chain = jax.random.split(negatives, 5)
  eps_pos = negatives.eps if given else jax.random.normal(k_pos, x0.shape)
  x_pos = schedule.q_sample(x0, t, eps_pos)
  eps_init = negatives.init if given else jax.random.normal(k_init, x0.shape)
  x_init = schedule.q_sample(x0, t, settings.mining_noise_scale * eps_init)
  inp_neg, chain_cond = inp, cond
  metrics = {}
  if settings.use_replay_buffer:
    x_replay, inp_replay, available = replay.sample_sharded(buffer, k_replay, t)
    if settings.replay_mixing == "sample":
      use = jax.random.bernoulli(k_mix, settings.replay_sample_prob, t.shape) & available
    else:
      use = jax.random.bernoulli(k_mix, settings.replay_sample_prob) & jnp.all(available)
      use = jnp.broadcast_to(use, t.shape)
    x_init = jnp.where(use[:, None], x_replay, x_init)
    if settings.replay_store_condition:
      inp_neg = jnp.where(use[:, None], inp_replay, inp)
      chain_cond = energy_fn.condition(params, inp_neg, t)
    metrics["replay_use"] = jnp.mean(use.astype(jnp.float32))

  if given:
    x_neg, chain = langevin.langevin_chain(
        energy_fn, params, inp_neg, x_init, t, negatives.chain, schedule,
        settings.langevin_sigma_multiplier, settings.langevin_grad_clip)
  else:
    x_neg, chain = langevin.sample_negatives(
        energy_fn, params, inp_neg, x_init, t, k_chain, settings.mining_opt_steps, schedule,
        settings.langevin_sigma_multiplier, settings.langevin_grad_clip,
        cond=chain_cond)
  if settings.use_replay_buffer:
    buffer = replay.add_sharded(buffer, x_neg, t,
                                inp_neg if settings.replay_store_condition else None)
    metrics["replay_fill"] = replay.fill_fraction(buffer)

  # D) the sample is stopped (inside the chain); the energy of the negative is not.
  answer = schedule.x0_estimate(x_neg, t)
  if settings.cd_negatives == "denoised":
    score = model_lib.conditioned_score(energy_fn, jax.lax.stop_gradient(params),
                                        jax.lax.stop_gradient(chain_cond), x_neg)
    answer = clip_answer(schedule.predict_start_from_noise(x_neg, t, score))
  x_compare = x_neg
  if settings.cd_negatives != "chain":
    x_compare = schedule.q_sample(answer, t, eps_pos)
  e_pos, e_neg = _paired_energies(energy_fn, energy_params, inp, x_pos, x_compare, t,
                                  inp_neg if settings.replay_store_condition else None)
  loss = cd_loss_terms(e_pos, e_neg, settings.energy_reg_weight, settings.cd_loss,
                       settings.cd_margin)
  if settings.use_residual_filter:
    keep = negative_keep(settings, residual_fn, inp_neg, answer)
    loss = loss * keep
    metrics["filter_keep"] = jnp.mean(keep)
  loss = loss * timestep_mask(settings, t)
  metrics.update(energy_pos=jnp.mean(e_pos), energy_neg=jnp.mean(e_neg),
                 langevin_displacement=chain.displacement,
                 langevin_grad_norm=chain.last_grad_norm)
  return loss, energy_weight(settings, step), metrics, buffer


def make_loss_fn(energy_fn: Callable, schedule: Schedule, settings: LossSettings,
                 residual_fn: Optional[Callable] = None):
  """Builds ``loss_fn(params, inp, x0, key, step, buffer, energy_params=None) -> (loss, (metrics,
  buffer))``: ``make_noise_loss_fn``'s loss with the timesteps, the noise and the energy
  term's draws taken from ``key``.

  inp: (B, inp_dim), x0: (B, D) targets, step: int32 scalar (optimiser steps
  done), buffer: stacked ReplayBuffer shards (replay.create_sharded) or None.
  energy_params: the parameters the energy term's E_pos / E_neg read (default
  ``params``). Differentiating w.r.t. (params, energy_params) at the same values
  splits the gradient into its denoising and its energy part in one backward
  pass; their sum is the gradient of the loss. Metrics are device scalars.
  """
  noise_loss_fn = make_noise_loss_fn(energy_fn, schedule, settings, residual_fn)

  def loss_fn(params, inp, x0, key, step, buffer, energy_params=None):
    k_t, k_eps, k_neg = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_timesteps)
    eps = jax.random.normal(k_eps, x0.shape)
    return noise_loss_fn(params, inp, x0, t, eps, k_neg, step, buffer, energy_params)

  return loss_fn


def make_noise_loss_fn(energy_fn: Callable, schedule: Schedule, settings: LossSettings,
                       residual_fn: Optional[Callable] = None):
  """Builds ``make_loss_fn``'s loss with its draws given: ``loss_fn(params, inp, x0, t, eps,
  negatives, step, buffer, energy_params=None) -> (loss, (metrics, buffer))``.

  t: (B,) int32 timesteps, eps: (B, D) the denoising term's noise, negatives: the
  energy term's draws, a PRNG key or a NegativeNoise; the rest as in make_loss_fn.
  """

  def loss_fn(params, inp, x0, t, eps, negatives, step, buffer, energy_params=None):
    cond = energy_fn.condition(params, inp, t)  # shared by the score and the descent or chain
    loss_mse, pred, x_t = denoising_loss(energy_fn, params, schedule, inp, x0, t, eps, cond)
    x0_hat = clip_answer(schedule.predict_start_from_noise(x_t, t, pred))
    metrics = dict(
        loss_mse=jnp.mean(loss_mse),
        score_norm=jnp.mean(jnp.linalg.norm(pred, axis=-1)),
        pred_norm=jnp.mean(jnp.linalg.norm(x0_hat, axis=-1)),
        target_norm=jnp.mean(jnp.linalg.norm(x0, axis=-1)),
    )
    denoising = jnp.mean(loss_mse)
    if settings.sampler_state_weight:
      loss_state = sampler_state_loss(energy_fn, params, schedule, cond, x0_hat, x0, t)
      metrics["loss_sampler_state"] = jnp.mean(loss_state)
      denoising = denoising + settings.sampler_state_weight * jnp.mean(loss_state)
    if settings.strategy.energy_term is None:
      return denoising, (dict(metrics, loss=denoising), buffer)
    if settings.strategy.energy_term == "nce":
      energy_loss, weight, extra = _nce_energy_loss(
          energy_fn, params, schedule, settings, inp, cond, x0, t, negatives, energy_params)
    else:
      energy_loss, weight, extra, buffer = _cd_energy_loss(
          energy_fn, params, schedule, settings, residual_fn, inp, cond, x0, t, negatives, step,
          buffer, energy_params)
    loss = denoising + weight * jnp.mean(energy_loss)
    metrics.update(extra)
    metrics.update(loss=loss, loss_energy=jnp.mean(energy_loss), energy_weight=weight,
                   energy_gap=extra["energy_neg"] - extra["energy_pos"])
    return loss, (metrics, buffer)

  return loss_fn
