"""Evaluation of the IRED sampler on the task's fixed, seeded evaluation sets.

Two sets, drawn once on the host by the task (``task.eval_set``; the matrix tasks draw
them as the PyTorch reference does, same seeds, same matrices): in-distribution
(``eval_seed``) and harder / out-of-distribution. Problem i of a set starts the sampler
from the noise of fold_in(PRNGKey(eval_seed), i) (``index_keys``; the same derivation
gives the landscape's and solve's streams: sampler.stream), so an evaluation is a
deterministic function of the parameters, and an answer does not depend on the chunk
size or the device count. On a mesh the problems are split over its ``data`` axis, the
parameters stay on the devices (replicated), and every host takes part.

A set's answers are the sampler's outputs (sqrt(abar_0) x0, or x0 with
``eval_return_x0``); the task scores them (``task.score``: MSE and residual for the
continuous tasks, solved and violations for the discrete ones), beside its trivial
baselines (``task.baseline_scores``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ired_cd import parallel
from ired_cd import sampler as sampler_lib
from ired_cd.tasks import SPLITS
from ired_cd.tasks.base import means


class Evaluator:
  """Runs the sampler over both evaluation sets in chunks; returns host floats.

  Cheap to build: the sets are drawn (and the baselines scored) when first used, so
  the compile tool builds the evaluation program (``sample``, ``chunk``) without them.
  """

  def __init__(self, setup, size: int = None, chunk: int = None, seed: int = None,
               return_x0: bool = None, mesh=None):
    c = setup.config
    self.task = setup.task
    self.size = size or c.eval_size
    self.mesh = mesh or parallel.make_mesh()
    self.chunk = chunk_size(min(chunk or c.eval_chunk, self.size), self.mesh)
    self.seed = c.eval_seed if seed is None else seed
    self.return_x0 = c.eval_return_x0 if return_x0 is None else return_x0
    self.sample = sampler_lib.make_sampler(setup.energy_fn, setup.schedule, self.return_x0)
    self.setup = setup
    self._particle_programs = {}

  @functools.cached_property
  def sets(self):
    """{suffix: (inputs (N, inp_dim), targets (N, out_dim))}, float32 numpy."""
    return {suffix: self.task.eval_set(self.size, self.seed, ood)
            for suffix, ood in SPLITS.items()}

  @functools.cached_property
  def keys(self) -> np.ndarray:
    """Problem i's key, fold_in(PRNGKey(seed), i): (N, 2) uint32."""
    return index_keys(jax.random.PRNGKey(self.seed), self.size)

  def predict(self, params, inputs, inner_steps: int):
    """Sampler outputs for an evaluation set's ``inputs`` (N, inp_dim), in chunks of
    ``self.chunk``; problem i starts from ``self.keys[i]``."""
    return predict(self.sample, params, inputs, self.keys[:len(inputs)], inner_steps,
                   self.chunk, self.mesh)

  @functools.cached_property
  def baselines(self) -> Dict[str, float]:
    """The task's trivial baselines on the sets, as 'eval/...' keys (e.g.
    'eval/mse_mean_predictor', 'eval/solved_ood_random')."""
    return {f"eval/{k}": v for k, v in self.task.baseline_scores(self.sets, self.seed).items()}

  def report(self, params, inner_steps: Sequence[int] = (5,)) -> Dict[str, float]:
    """``self(params, inner_steps)`` as 'eval/...' metrics, with ``baselines`` beside."""
    return {**{f"eval/{k}": v for k, v in self(params, inner_steps).items()},
            **self.baselines}

  def __call__(self, params, inner_steps: Sequence[int] = (5,)) -> Dict[str, float]:
    """The task's metrics per set ({'mse', 'mse_ood', 'residual', ...} or {'solved',
    'violations', ...}) and 'pred_norm'.

    Keys without a suffix use the first entry of ``inner_steps``; every entry
    also gets ``..._k{n}`` keys when more than one is asked for.
    """
    results = {}
    for n_index, n in enumerate(inner_steps):
      tag = f"_k{n}" if len(inner_steps) > 1 else ""
      for suffix, (inputs, targets) in self.sets.items():
        pred = self.predict(params, inputs, n)
        values = dict(means(self.task.score(inputs, targets, pred)),
                      pred_norm=float(np.mean(np.linalg.norm(pred, axis=-1))))
        for name, value in values.items():
          results[f"{name}{suffix}{tag}"] = value
          if n_index == 0 and tag:
            results[f"{name}{suffix}"] = value
    return results


  def particle_program(self, particles: int, renoise: float = 1.0,
                       resample_tau: Optional[float] = None):
    """(the jitted particle sampler ``particles`` runs, problems per call): a chunk of
    ``self.chunk`` // K problems, K particles each (about ``self.chunk`` rows). Built once
    per setting, so every inner-step count and call reuses its compiled program."""
    key = (particles, renoise, resample_tau)
    if key not in self._particle_programs:
      self._particle_programs[key] = (
          sampler_lib.make_particle_sampler(self.setup.energy_fn, self.setup.schedule,
                                            particles, renoise, self.return_x0, resample_tau),
          chunk_size(max(1, self.chunk // particles), self.mesh))
    return self._particle_programs[key]

  def particles(self, params, particles: int, inner_steps: int, renoise: float = 1.0,
                resample_tau: Optional[float] = None) -> Dict[str, float]:
    """The sampler with ``particles`` trajectories per problem (sampler.sample_particles) on
    both sets, scored per pick (``pick_scores``): '{metric}{suffix}_p{K}_{pick}' and, for
    a discrete task, 'distinct{suffix}_p{K}' and the best of K random answers
    ('{metric}{suffix}_p{K}_random': task.random_particle_scores)."""
    sample, chunk = self.particle_program(particles, renoise, resample_tau)
    results = {}
    for suffix, (inputs, targets) in self.sets.items():
      outputs, energies = predict(sample, params, inputs, self.keys[:len(inputs)], inner_steps,
                                  chunk, self.mesh)
      for name, value in pick_scores(self.task, inputs, targets, outputs, energies).items():
        metric, _, pick = name.partition("_")
        results[f"{metric}{suffix}_p{particles}" + (f"_{pick}" if pick else "")] = value
    if self.task.discrete:
      results.update(self.task.random_particle_scores(self.sets, [particles], self.seed))
    return results


@dataclasses.dataclass(frozen=True)
class Particles:
  """Particle evaluation: ``counts`` trajectories per problem, each count scored per pick,
  re-noised between timesteps with ``renoise`` (on by default: start noise alone ends every
  trajectory at one answer), resampled by energy with ``resample_tau`` (None: independent),
  on the first ``size`` problems of each evaluation set (None: all of them)."""

  counts: Tuple[int, ...] = (1, 8, 64)
  renoise: float = 1.0
  resample_tau: Optional[float] = None
  size: Optional[int] = None

  def report(self, evaluator: "Evaluator", params, inner_steps: int) -> Dict[str, float]:
    """Every count's ``Evaluator.particles`` as 'eval/...' keys (on ``size`` problems: the
    same sets' first ones, the same keys)."""
    if self.size is not None and self.size < evaluator.size:
      evaluator = Evaluator(evaluator.setup, size=self.size, chunk=evaluator.chunk,
                            seed=evaluator.seed, return_x0=evaluator.return_x0,
                            mesh=evaluator.mesh)
    results = {}
    for k in self.counts:
      results.update(evaluator.particles(params, k, inner_steps, self.renoise,
                                         self.resample_tau))
    return {f"eval/{name}": value for name, value in results.items()}


PICKS = ("one", "energy", "oracle")  # particle 0; the lowest E at t = 0; the best (by the target)


def pick_scores(task, inputs, targets, outputs, energies) -> Dict[str, float]:
  """Each metric of the particles' answers (N, K, D) per pick: '{metric}_{pick}' for PICKS
  (the oracle's: the particle with the least error, violations or MSE, so never below the
  others), and for a discrete task 'distinct': the distinct right answers per problem."""
  n, k = energies.shape
  per_particle = {m: np.asarray(v).reshape(n, k) for m, v in task.score(
      np.repeat(inputs, k, axis=0), np.repeat(targets, k, axis=0),
      outputs.reshape(n * k, -1)).items()}
  error = per_particle["violations" if task.discrete else "mse"]
  chosen = dict(one=np.zeros(n, int), energy=np.argmin(energies, axis=1),
                oracle=np.argmin(error, axis=1))
  scores = {f"{metric}_{pick}": float(np.mean(values[np.arange(n), chosen[pick]]))
            for metric, values in per_particle.items() for pick in PICKS}
  if task.discrete:
    answers = task.canonical(task.decode(outputs.reshape(n * k, -1))).reshape(n, k, -1)
    solved = per_particle["solved"] > 0
    scores["distinct"] = float(np.mean([len({a.tobytes() for a in answers[i][solved[i]]})
                                        for i in range(n)]))
  return scores


def headline_keys(task) -> tuple:
  """The summary keys of the task's first metric on both sets, e.g. ('eval/mse',
  'eval/mse_ood')."""
  return tuple(f"eval/{task.metrics[0].name}{suffix}" for suffix in SPLITS)


def describe(task, result) -> str:
  """A result's headline metric on both sets beside the task's baselines, e.g.
  'eval/mse=0.01039 eval/mse_ood=0.21096 (mean predictor 0.01423 / 0.22599)'."""
  keys = headline_keys(task)
  baselines = ", ".join(
      f"{name.replace('_', ' ')} " + " / ".join(f"{result[f'{k}_{name}']:.5f}" for k in keys)
      for name in task.baselines if all(f"{k}_{name}" in result for k in keys))
  return " ".join(f"{k}={result[k]:.5f}" for k in keys) + (f" ({baselines})" if baselines else "")


def at_inner_steps(result, name: str, inner_steps: Sequence[int]):
  """The values of metric ``name`` (e.g. 'eval/mse_ood') at each of ``inner_steps`` in a
  report or eval.json scored with them (one count gives unsuffixed keys, several ..._k{n})."""
  return [result[f"{name}_k{k}" if len(inner_steps) > 1 else name] for k in inner_steps]


def fold_in_keys(key, data) -> np.ndarray:
  """fold_in(key, d) for each d of ``data`` (n,) uint32: (n, 2) uint32, one key per problem."""
  data = jnp.asarray(data, jnp.uint32)
  return np.asarray(jax.vmap(lambda d: jax.random.fold_in(key, d))(data))


def index_keys(key, n: int) -> np.ndarray:
  """Problem i's start-noise key, fold_in(key, i), for i < n: (n, 2) uint32."""
  return fold_in_keys(key, np.arange(n, dtype=np.uint32))


def chunk_size(chunk: int, mesh) -> int:
  """``chunk`` rounded up to a multiple of the mesh's ``data`` axis."""
  devices = parallel.data_size(mesh)
  return -(-chunk // devices) * devices


def _global_rows(rows: np.ndarray, mesh):
  """Host rows (the same on every host) as one array split over the mesh's ``data`` axis."""
  return jax.make_array_from_callback(rows.shape, parallel.batch_sharding(mesh),
                                      lambda index: rows[index])


def predict(sample, params, inputs, keys, inner_steps: int, chunk: int, mesh):
  """``sample``'s outputs (sampler.make_sampler, or a pytree of (N, ...) arrays:
  make_particle_sampler) for ``inputs`` (N, inp_dim) -> (N, out_dim).

  Row i starts from the noise of ``keys[i]`` ((N, 2) uint32), whatever its row,
  chunk or N. In chunks of ``chunk`` rows (a multiple of the mesh's ``data``
  size), the last one padded (its extra rows are dropped), so every N reuses one
  compiled sampler; each chunk is split over the ``data`` axis with the
  parameters replicated on the mesh, and the answers are fetched once at the end.
  """
  n = inputs.shape[0]
  padded = -(-n // chunk) * chunk
  inputs = np.concatenate([inputs, np.zeros((padded - n,) + inputs.shape[1:], inputs.dtype)])
  keys = np.concatenate([keys, np.zeros((padded - n,) + keys.shape[1:], keys.dtype)])
  params = jax.device_put(params, parallel.replicated(mesh))
  outs = [sample(params, _global_rows(inputs[start:start + chunk], mesh),
                 _global_rows(keys[start:start + chunk], mesh), jnp.int32(inner_steps))
          for start in range(0, padded, chunk)]
  if jax.process_count() > 1:  # every host holds some of the rows: gather them on each
    outs = [multihost_utils.process_allgather(out, tiled=True) for out in outs]
  return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts)[:n], *jax.device_get(outs))
