"""Small models, configs and cached jitted train steps shared by the unit tests.

Compiling a train step costs seconds on a laptop CPU, so each strategy's jitted
step is built once per session and shared by every test that needs it. The
steps donate their state: always start from a fresh ``train.init_state``.
"""

import functools

import jax

from configs import base, none
from ired_cd import loop, train
from ired_cd.diffusion import cosine_schedule
from ired_cd.model import EnergyFunction, EnergyMLP, init_params

T = 10
RANK = 4
DIM = RANK * RANK


def small_model(num_timesteps=T, inp_dim=DIM):
  """EnergyMLP for rank-4 tasks: out 16, hidden 32, embedding 16."""
  return EnergyMLP(out_dim=DIM, hidden=32, emb_dim=16, num_timesteps=num_timesteps,
                   inp_dim=inp_dim)


@functools.lru_cache(maxsize=None)
def small_energy(inp_dim=DIM, seed=0, num_timesteps=T):
  """(energy_fn, params) of a small model with torch-style init (cached: treat as read-only)."""
  m = small_model(num_timesteps, inp_dim)
  with jax.ensure_compile_time_eval():  # concrete even when first called under a trace
    params = init_params(m, jax.random.PRNGKey(seed))
  return EnergyFunction(m), params


@functools.lru_cache(maxsize=None)
def schedule():
  with jax.ensure_compile_time_eval():
    return cosine_schedule(T)


def tiny_config(strategy, **overrides):
  """configs/base.py 'tiny' with the stage switches of ``strategy``."""
  return base.run_config(base.get_config("tiny"), strategy, **overrides)


@functools.lru_cache(maxsize=None)
def tiny_setup(strategy):
  return train.build_setup(tiny_config(strategy))


@functools.lru_cache(maxsize=None)
def tiny_step(strategy):
  """``train.jit_train_step`` of the tiny setup (state donated)."""
  return train.jit_train_step(tiny_setup(strategy))


def trained_none_run(path, train_steps=20):
  """Trains a tiny `none` run (checkpoint at ``train_steps``) in ``path``; returns ``path``."""
  config = none.get_config("tiny")
  config.train_steps = train_steps
  loop.train_and_evaluate(config, path, progress=False)
  return path
