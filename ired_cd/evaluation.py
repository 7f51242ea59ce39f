"""Evaluation of the IRED sampler on fixed, seeded evaluation sets.

Two sets, drawn once on the host like the PyTorch reference (same seeds, same
matrices): in-distribution (``eval_seed``) and harder / out-of-distribution
(``eval_seed + 1``). Problem i of a set starts the sampler from the noise of
fold_in(PRNGKey(eval_seed), i), so an evaluation is a deterministic function of
the parameters, and an answer does not depend on the chunk size or the device
count. On a mesh the problems are split over its ``data`` axis, the parameters
stay on the devices (replicated), and every host takes part.
"""

from __future__ import annotations

import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ired_cd import parallel, tasks
from ired_cd import sampler as sampler_lib

SPLITS = {"": False, "_ood": True}  # metric suffix -> ood flag


class Evaluator:
  """Runs the sampler over both evaluation sets in chunks; returns host floats."""

  def __init__(self, setup, size: int = None, chunk: int = None, seed: int = None,
               return_x0: bool = None, mesh=None):
    c = setup.config
    self.task = setup.task
    self.size = size or c.eval_size
    self.mesh = mesh or parallel.make_mesh()
    self.chunk = chunk_size(min(chunk or c.eval_chunk, self.size), self.mesh)
    self.seed = c.eval_seed if seed is None else seed
    self.sets = {suffix: tasks.eval_set(setup.task, self.size, self.seed, ood)
                 for suffix, ood in SPLITS.items()}
    self.keys = index_keys(jax.random.PRNGKey(self.seed), self.size)
    self._sample = sampler_lib.make_sampler(
        setup.energy_fn, setup.schedule, setup.task.out_dim,
        c.eval_return_x0 if return_x0 is None else return_x0)
    residual = setup.task.residual
    self._residual = jax.jit(residual) if residual is not None else None

  def predict(self, params, inputs, inner_steps: int):
    """Sampler outputs for an evaluation set's ``inputs`` (N, inp_dim), in chunks of
    ``self.chunk``; problem i starts from ``self.keys[i]``."""
    return predict(self._sample, params, inputs, self.keys[:len(inputs)], inner_steps,
                   self.chunk, self.mesh)

  @functools.cached_property
  def mean_predictor(self) -> Dict[str, float]:
    """{'eval/mse_mean_predictor', 'eval/mse_ood_mean_predictor'}: the trivial baseline."""
    return {f"eval/{k}": v for k, v in mean_predictor_mse(self.task, self.sets, self.seed).items()}

  def report(self, params, inner_steps: Sequence[int] = (5,)) -> Dict[str, float]:
    """``self(params, inner_steps)`` as 'eval/...' metrics, with ``mean_predictor`` beside."""
    return {**{f"eval/{k}": v for k, v in self(params, inner_steps).items()},
            **self.mean_predictor}

  def __call__(self, params, inner_steps: Sequence[int] = (5,)) -> Dict[str, float]:
    """{'mse', 'mse_ood', 'residual', 'residual_ood', 'pred_norm', ...}.

    Keys without a suffix use the first entry of ``inner_steps``; every entry
    also gets ``..._k{n}`` keys when more than one is asked for.
    """
    results = {}
    for n_index, n in enumerate(inner_steps):
      tag = f"_k{n}" if len(inner_steps) > 1 else ""
      for suffix, (inputs, targets) in self.sets.items():
        pred = self.predict(params, inputs, n)
        values = {"mse": float(np.mean(np.square(pred - targets))),
                  "pred_norm": float(np.mean(np.linalg.norm(pred, axis=-1)))}
        if self._residual is not None:
          values["residual"] = float(np.mean(self._residual(inputs, pred)))
        for name, value in values.items():
          results[f"{name}{suffix}{tag}"] = value
          if n_index == 0 and tag:
            results[f"{name}{suffix}"] = value
    return results


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
  """``sample``'s outputs (sampler.make_sampler) for ``inputs`` (N, inp_dim) -> (N, out_dim).

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
  return np.concatenate(jax.device_get(outs))[:n]


def mean_predictor_mse(task: tasks.Task, sets, seed: int, n: int = 100_000) -> Dict[str, float]:
  """MSE of always predicting the mean in-distribution target (the trivial baseline).

  The mean is taken over ``n`` fresh in-distribution targets (seed + 7, as the
  reference), the MSE over the given evaluation sets.
  """
  _, targets = task.sample_numpy(np.random.RandomState(seed + 7), n, False)
  mean = targets.mean(axis=0)
  return {f"mse{suffix}_mean_predictor": float(np.mean(np.square(y.astype(np.float64) - mean)))
          for suffix, (_, y) in sets.items()}
