"""Small models, configs and cached jitted train steps shared by the unit tests.

Compiling a train step costs seconds on a laptop CPU, so each strategy's jitted
step is built once per session and shared by every test that needs it. The
steps donate their state: always start from a fresh ``train.init_state``.
``TRACES`` counts how often each of them was traced; ``jit_traces`` counts the
traces of any jitted function in a block.
"""

import collections
import contextlib
import dataclasses
import functools

import jax

from configs import base, none
from ired_cd import loop, tasks, train
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


# strategy -> traces of its tiny_step so far (each trace draws one batch: the counter
# is a Python side effect of the task's sampler, which runs only while jit traces).
TRACES = collections.Counter()


class CountedTask:
  """A task whose ``sample`` counts its calls in ``TRACES[name]`` (everything else is the
  task's own)."""

  def __init__(self, task, name):
    self._task, self._name = task, name

  def sample(self, *args):
    TRACES[self._name] += 1
    return self._task.sample(*args)

  def __getattr__(self, attribute):
    return getattr(self._task, attribute)


@functools.lru_cache(maxsize=None)
def tiny_step(strategy):
  """``train.jit_train_step`` of the tiny setup (state donated), its traces in ``TRACES``."""
  setup = tiny_setup(strategy)
  return train.jit_train_step(dataclasses.replace(setup, task=CountedTask(setup.task, strategy)))


@dataclasses.dataclass(frozen=True)
class Shape:
  """The module fields a hand-made energy shows the samplers (model.EnergyFunction's module)."""

  out_dim: int
  hidden: int = 1
  last_layer: str = "plain"


def tiny_task(name):
  """Task ``name`` at the tiny variant's size (base.TINY_TASKS)."""
  return tasks.from_config(dict(base.get_config().to_dict(), task=name, **base.TINY_TASKS[name]))


# The event jax.monitoring records each time jit traces a function (its name in ``fun_name``).
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@contextlib.contextmanager
def jit_traces():
  """Yields a Counter of function name -> jit traces of it inside the block."""
  traced = collections.Counter()

  def listener(event, duration_secs, **kwargs):
    del duration_secs
    if event == TRACE_EVENT:
      traced[kwargs.get("fun_name")] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield traced
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def trained_none_run(path, train_steps=20):
  """Trains a tiny `none` run (checkpoint at ``train_steps``) in ``path``; returns ``path``."""
  config = none.get_config("tiny")
  config.train_steps = train_steps
  loop.train_and_evaluate(config, path, progress=False)
  return path
