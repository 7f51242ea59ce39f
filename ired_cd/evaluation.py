"""Evaluation of the IRED sampler on fixed, seeded evaluation sets.

Two sets, drawn once on the host like the PyTorch reference (same seeds, same
matrices): in-distribution (``eval_seed``) and harder / out-of-distribution
(``eval_seed + 1``). The sampler's start noise is drawn from ``eval_seed`` too,
so an evaluation is a deterministic function of the parameters.
"""

from __future__ import annotations

import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd import sampler as sampler_lib
from ired_cd import tasks

SPLITS = {"": False, "_ood": True}  # metric suffix -> ood flag


class Evaluator:
  """Runs the sampler over both evaluation sets in chunks; returns host floats."""

  def __init__(self, setup, size: int = None, chunk: int = None, seed: int = None,
               return_x0: bool = None):
    c = setup.config
    self.task = setup.task
    self.size = size or c.eval_size
    self.chunk = min(chunk or c.eval_chunk, self.size)
    self.seed = c.eval_seed if seed is None else seed
    self.sets = {suffix: tasks.eval_set(setup.task, self.size, self.seed, ood)
                 for suffix, ood in SPLITS.items()}
    self._sample = sampler_lib.make_sampler(
        setup.energy_fn, setup.schedule, setup.task.out_dim,
        c.eval_return_x0 if return_x0 is None else return_x0)
    residual = setup.task.residual
    self._residual = jax.jit(residual) if residual is not None else None

  def predict(self, params, inputs, inner_steps: int):
    """Sampler outputs for ``inputs`` (N, inp_dim), in chunks of ``self.chunk``."""
    return predict(self._sample, params, inputs, inner_steps, self.chunk,
                   jax.random.PRNGKey(self.seed))

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


def predict(sample, params, inputs, inner_steps: int, chunk: int, key):
  """``sample``'s outputs (sampler.make_sampler) for ``inputs`` (N, inp_dim) -> (N, out_dim).

  In chunks of ``chunk`` rows, the last one zero-padded so that every chunk
  reuses one compiled sampler; chunk i starts from the noise of fold_in(key, i).
  """
  outs = []
  for i, start in enumerate(range(0, inputs.shape[0], chunk)):
    batch = inputs[start:start + chunk]
    if batch.shape[0] < chunk:
      batch = np.concatenate([batch, np.zeros((chunk - batch.shape[0],) + batch.shape[1:],
                                              batch.dtype)])
    out = sample(params, batch, jax.random.fold_in(key, i), jnp.int32(inner_steps))
    outs.append(np.asarray(out))
  return np.concatenate(outs)[:inputs.shape[0]]


def mean_predictor_mse(task: tasks.Task, sets, seed: int, n: int = 100_000) -> Dict[str, float]:
  """MSE of always predicting the mean in-distribution target (the trivial baseline).

  The mean is taken over ``n`` fresh in-distribution targets (seed + 7, as the
  reference), the MSE over the given evaluation sets.
  """
  _, targets = task.sample_numpy(np.random.RandomState(seed + 7), n, False)
  mean = targets.mean(axis=0)
  return {f"mse{suffix}_mean_predictor": float(np.mean(np.square(y.astype(np.float64) - mean)))
          for suffix, (_, y) in sets.items()}
