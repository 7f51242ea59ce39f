"""Train state and the jitted train step.

``train_step(state, data=None) -> (state, metrics)`` is one XLA computation with the state
donated: it draws the batch on device (generated, or drawn from the task's ``data``,
device arrays the task built once: ``Setup.task.build_data``; None for generated
tasks), draws negatives, computes the loss, updates params (clip_by_global_norm then
Adam), the EMA and the replay buffer. ``make_multi_step(setup, n)`` runs n of them in a
lax.scan so the host is touched once per n steps (metrics are averaged over the n steps).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ired_cd import replay as replay_lib
from ired_cd import parallel, strategies, tasks
from ired_cd.diffusion import Schedule, cosine_schedule
from ired_cd.composed import ClauseEnergy, EdgeEnergy
from ired_cd.model import EnergyFunction, EnergyMLP, init_params


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # int32 scalar: optimiser steps completed
  params: Any
  opt_state: Any
  ema_params: Any
  replay: Optional[replay_lib.ReplayBuffer]
  key: jnp.ndarray  # uint32[2] PRNG key


def ema_decay(call_index, beta: float = 0.995, every: int = 10, after: int = 100,
              power: float = 2.0 / 3.0):
  """Decay of the s-th EMA update call (s = optimiser steps done - 1), ema-pytorch semantics.

  0.0 copies the online weights (s = 0, and every ``every``-th call up to
  ``after``), 1.0 leaves the EMA unchanged (calls off the ``every`` grid), else
  min(beta, 1 - (1 + s - after)^-power).  ema <- d ema + (1 - d) params.
  """
  s = jnp.asarray(call_index)
  on_grid = s % every == 0
  copy = (s == 0) | (on_grid & (s <= after))
  k = jnp.maximum(1 + s - after, 1).astype(jnp.float32)
  decay = jnp.clip(1.0 - k ** (-power), 0.0, beta)
  return jnp.where(copy, 0.0, jnp.where(on_grid, decay, 1.0))


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything static that a run is built from: model, task, schedule, optimiser, loss."""

  config: Any
  task: tasks.Task
  model: Union[EnergyMLP, ClauseEnergy, EdgeEnergy]
  schedule: Schedule
  optimizer: optax.GradientTransformation
  loss_settings: strategies.LossSettings

  @property
  def energy_fn(self) -> EnergyFunction:
    return EnergyFunction(self.model)


def learning_rate_schedule(config):
  """Adam's step size: constant, or cosine-decayed from ``learning_rate`` to 0 over
  ``learning_rate_decay_steps`` (a field of its own, so extending ``train_steps``
  on resume does not change the trajectory so far)."""
  if config.learning_rate_schedule == "constant":
    return config.learning_rate
  return optax.cosine_decay_schedule(config.learning_rate, config.learning_rate_decay_steps)


COMPOSED = {"clauses": ClauseEnergy, "edges": EdgeEnergy}  # schema.COMPOSED_TASKS's models


def build_setup(config) -> Setup:
  """Validates nothing (call schema.validate first); builds the static pieces."""
  task = tasks.from_config(config)
  if config.energy_model in COMPOSED:
    model = COMPOSED[config.energy_model](
        out_dim=task.out_dim, inp_dim=task.inp_dim, hidden=config.hidden_dim,
        emb_dim=config.time_embedding_dim, matmul_dtype=config.matmul_dtype)
  else:
    model = EnergyMLP(out_dim=task.out_dim, hidden=config.hidden_dim,
                      emb_dim=config.time_embedding_dim, num_timesteps=config.diffusion_steps,
                      inp_dim=task.inp_dim, matmul_dtype=config.matmul_dtype,
                      last_layer=config.last_layer)
  optimizer = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adam(learning_rate_schedule(config), b1=config.adam_b1, b2=config.adam_b2))
  return Setup(config, task, model, cosine_schedule(config.diffusion_steps), optimizer,
               strategies.LossSettings.from_config(config, task))


def init_state(setup: Setup, seed: Optional[int] = None, mesh=None) -> TrainState:
  """A fresh train state: torch-style init, EMA = params, empty replay buffer.

  With a mesh the state is built directly in its shardings (replay buffer: one
  shard per device on the data axis, everything else replicated).
  """
  c = setup.config
  num_shards = parallel.data_size(mesh)

  def build():
    key = jax.random.PRNGKey(c.seed if seed is None else seed)
    k_init, k_train = jax.random.split(key)
    params = init_params(setup.model, k_init)
    buffer = None
    if setup.loss_settings.use_replay_buffer:
      buffer = replay_lib.create_sharded(
          num_shards, c.diffusion_steps, c.replay_buffer_buckets, c.replay_buffer_size,
          setup.task.out_dim, setup.task.inp_dim if c.replay_store_condition else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.optimizer.init(params),
                      ema_params=jax.tree_util.tree_map(jnp.copy, params), replay=buffer,
                      key=k_train)

  if mesh is None:
    return build()
  shardings = parallel.state_shardings(jax.eval_shape(build), mesh)
  return jax.jit(build, out_shardings=shardings)()


def abstract_state(setup: Setup, mesh=None) -> TrainState:
  """``init_state``'s shapes and dtypes as jax.ShapeDtypeStructs, in its shardings on
  ``mesh`` (any mesh, a compile-only topology's too); nothing is allocated."""
  shapes = jax.eval_shape(lambda: init_state(setup, mesh=mesh))
  if mesh is None:
    return shapes
  return jax.tree_util.tree_map(
      lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
      shapes, parallel.state_shardings(shapes, mesh))


def _dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                              jax.tree_util.tree_leaves(b)))


def combine_gradients(grad_denoise, grad_energy, surgery: str = "none", max_ratio: float = 0.0):
  """The step's gradient from its denoising and its (weighted) energy part, and instruments.

  surgery ``project`` drops the component of the energy gradient that points
  against the denoising gradient (PCGrad, Yu et al. 2020): the energy term may
  then only move the parameters in directions that do not, to first order,
  raise the denoising loss. ``max_ratio`` > 0 rescales the energy gradient to a
  norm of at most max_ratio * ||grad_denoise||. Returns (gradient, metrics) with
  ``grad_norm_denoise``, ``grad_norm_energy`` (before surgery) and their
  ``grad_cosine``.
  """
  dot = _dot(grad_denoise, grad_energy)
  sq_denoise = _dot(grad_denoise, grad_denoise)
  norm_denoise, norm_energy = jnp.sqrt(sq_denoise), jnp.sqrt(_dot(grad_energy, grad_energy))
  metrics = dict(grad_norm_denoise=norm_denoise, grad_norm_energy=norm_energy,
                 grad_cosine=dot / jnp.maximum(norm_denoise * norm_energy, 1e-30))
  scale_denoise, scale = jnp.float32(0.0), jnp.float32(1.0)
  if surgery == "project":  # g_e <- g_e - min(0, <g_e, g_d>) / |g_d|^2 g_d
    scale_denoise = -jnp.minimum(dot, 0.0) / jnp.maximum(sq_denoise, 1e-30)
  if max_ratio:
    projected_sq = (norm_energy ** 2 + 2 * scale_denoise * dot + scale_denoise ** 2 * sq_denoise)
    projected = jnp.sqrt(jnp.maximum(projected_sq, 0.0))
    scale = jnp.minimum(1.0, max_ratio * norm_denoise / jnp.maximum(projected, 1e-30))
  grad = jax.tree_util.tree_map(lambda d, e: d + scale * (e + scale_denoise * d),
                                grad_denoise, grad_energy)
  return grad, metrics


def make_train_step(setup: Setup, mesh=None) -> Callable:
  """The un-jitted ``train_step(state, data=None) -> (state, metrics)``; with a mesh the batch is
  generated sharded along its data axis."""
  c = setup.config
  loss_fn = strategies.make_loss_fn(setup.energy_fn, setup.schedule, setup.loss_settings,
                                    setup.task.residual)
  settings = setup.loss_settings
  split = settings.strategy.energy_term is not None and (
      settings.energy_grad_surgery != "none" or settings.energy_grad_max_ratio > 0
      or settings.log_grad_conflict)
  if split:  # d/d(params, energy_params) at the same values: (denoising, energy) parts
    grad_fn = jax.value_and_grad(
        lambda p, pe, *args: loss_fn(p, *args, energy_params=pe), argnums=(0, 1), has_aux=True)
  else:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, data=None):
    key, k_data, k_loss = jax.random.split(state.key, 3)
    inp, x0 = setup.task.sample(k_data, c.batch_size, c.ood, data)
    if mesh is not None:
      inp, x0 = jax.lax.with_sharding_constraint((inp, x0), parallel.batch_sharding(mesh))
    if split:
      (_, (metrics, buffer)), (grad_denoise, grad_energy) = grad_fn(
          state.params, state.params, inp, x0, k_loss, state.step, state.replay)
      grads, conflict = combine_gradients(grad_denoise, grad_energy,
                                          settings.energy_grad_surgery,
                                          settings.energy_grad_max_ratio)
      metrics = dict(metrics, **conflict)
    else:
      (_, (metrics, buffer)), grads = grad_fn(state.params, inp, x0, k_loss, state.step,
                                              state.replay)
    updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, c.ema_decay, c.ema_update_every, c.ema_update_after_step,
                      c.ema_power)
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p,
                                 state.ema_params, params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema, replay=buffer, key=key), metrics

  return train_step


def _jit(fn, state_like, mesh, num_host_outputs: int = 1):
  """jit of ``fn(state, data=None)`` with the state donated and, on a mesh, its shardings
  pinned on the way out (the ``num_host_outputs`` outputs after the state replicated). The
  arguments keep the shardings they come with: the state built in its shardings (init_state,
  abstract_state, the step before), the task's data replicated (device_data); the data is a
  keyword argument, absent for a task that generates its batches."""
  if mesh is None:
    return jax.jit(fn, donate_argnums=0)
  shardings = parallel.state_shardings(state_like, mesh)
  return jax.jit(fn, donate_argnums=0,
                 out_shardings=(shardings,) + (parallel.replicated(mesh),) * num_host_outputs)


def device_data(data, mesh=None):
  """The task's training data (``task.build_data``) on the devices, replicated on a mesh."""
  if data is None:
    return None
  return jax.device_put(data, parallel.replicated(mesh) if mesh is not None else None)


def make_multi_step(setup: Setup, num_steps: int, mesh=None, state_like=None) -> Callable:
  """Jitted ``run(state, data=None) -> (state, metrics, health)`` doing ``num_steps`` steps on
  device (``data``: the task's training data on the devices, ``device_data``; None for a
  task that generates its batches).

  The state is donated. ``metrics`` are the means over the steps. ``health``:
  ``nonfinite_steps`` (steps with a non-finite loss or gradient norm: an
  infinite norm makes clipping zero every update), ``first_nonfinite`` (index
  of the first, or num_steps), ``loss_nonfinite_first`` (whether the loss of that
  step is non-finite: else its gradient norm is) and ``params_finite``.
  """
  train_step = make_train_step(setup, mesh)

  def run(state, data=None):
    state, stacked = jax.lax.scan(lambda s, _: train_step(s, data), state, None,
                                  length=num_steps)
    metrics = jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), stacked)
    loss_bad = ~jnp.isfinite(stacked["loss"])
    bad = loss_bad | ~jnp.isfinite(stacked["grad_norm"])
    health = dict(
        nonfinite_steps=jnp.sum(bad),
        first_nonfinite=jnp.where(jnp.any(bad), jnp.argmax(bad), num_steps),
        loss_nonfinite_first=loss_bad[jnp.argmax(bad)],
        params_finite=jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(state.params)])))
    return state, metrics, health

  return _jit(run, state_like, mesh, num_host_outputs=2)


def jit_train_step(setup: Setup, mesh=None, state_like=None) -> Callable:
  """``make_train_step`` jitted with the state donated (``state_like``: any state of the
  run, needed with a mesh to pin its shardings)."""
  return _jit(make_train_step(setup, mesh), state_like, mesh)


