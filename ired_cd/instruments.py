"""The energy descent's instruments (descent.DescentStats) summarised on the host: what the
sampler's descent did per timestep, as numbers (``summarize_stats``, for the landscape) and
as text (``describe_descent``, for ``experiments.solve --descent_stats``).
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import numpy as np

from ired_cd import solve
from ired_cd import sampler as sampler_lib

CHUNK = 256  # problems per compiled call


def map_chunks(fn, arrays: Tuple[np.ndarray, ...], chunk: int):
  """fn(*chunk arrays) over rows in chunks of ``chunk`` (the last zero-padded, so one
  compiled fn serves all); the outputs' (B, ...) leaves concatenated, padding dropped."""
  n = arrays[0].shape[0]
  outs = []
  for start in range(0, n, chunk):
    parts = [a[start:start + chunk] for a in arrays]
    pad = chunk - parts[0].shape[0]
    parts = [np.concatenate([p, np.zeros((pad,) + p.shape[1:], p.dtype)]) if pad else p
             for p in parts]
    outs.append(jax.device_get(fn(*parts)))
  return jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves)[:n], *outs)


def frozen_fraction(moved: np.ndarray):
  """(frozen (T, K), thawed (T,)) from moved (B, T, K): a sample is frozen from the first
  step >= 1 that did not move; ``thawed``: frozen samples that moved again later."""
  if moved.shape[-1] == 0:
    return np.zeros(moved.shape[1:]), np.zeros(moved.shape[1:2])
  still = ~moved.astype(bool)
  still[..., 0] = False  # step 0's rejection does not freeze: step 1 proposes twice the step
  frozen = np.logical_or.accumulate(still, axis=-1)
  thawed = np.any(moved[..., 1:] & frozen[..., :-1], axis=-1)
  return frozen.mean(axis=0), thawed.mean(axis=0)


def by_timestep(per_sampler_step: np.ndarray):
  """Reorders a sampler-ordered (t = T-1 .. 0) leading axis to t = 0 .. T-1, as lists."""
  return np.flip(per_sampler_step, axis=0).tolist()


def summarize_stats(stats) -> Dict:
  """Means over problems of the sampler's DescentStats (host arrays, (B, T, ...)); lists
  indexed by t = 0 .. T-1."""
  frozen, thawed = frozen_fraction(stats.moved)
  mean = lambda values: by_timestep(np.mean(values, axis=0))  # noqa: E731
  return dict(moved=mean(stats.moved), rejected=mean(stats.rejected),
              frozen=by_timestep(frozen), thawed=by_timestep(thawed),
              score_norm_denoised=mean(stats.score_norm_start),
              score_norm_descended=mean(stats.score_norm_end), energy=mean(stats.energy_end),
              energy_answer=float(np.mean(stats.energy_end[:, -1])))


def describe_descent(model: solve.Model, problems: np.ndarray, inner_steps: int,
                     seed: int = 0) -> str:
  """The instruments of the sampler on ``problems`` (n, inp_dim) as text, one line per
  timestep (experiments.solve --descent_stats)."""
  sample_with_stats = sampler_lib.make_sampler(model.setup.energy_fn, model.setup.schedule,
                                               True, with_stats=True)
  stats = map_chunks(lambda inputs, keys: sample_with_stats(model.params, inputs, keys,
                                                           inner_steps)[1],
                     (problems, solve.content_keys(problems, seed)), min(CHUNK, len(problems)))
  s = summarize_stats(stats)
  lines = [f"descent at inner_steps={inner_steps} ({len(problems)} problems): per timestep, "
           "fraction of proposals that moved y per inner step, samples frozen after the last, "
           "||dE/dy|| after denoising -> after descent, E"]
  for t in reversed(range(len(s["moved"]))):
    lines.append(f"  t={t}: moved {np.round(s['moved'][t], 3).tolist()}, frozen "
                 f"{s['frozen'][t][-1] if inner_steps else 0.0:.3f}, thawed {s['thawed'][t]:.3f}, "
                 f"||dE/dy|| {s['score_norm_denoised'][t]:.4g} -> "
                 f"{s['score_norm_descended'][t]:.4g}, E {s['energy'][t]:.5g}")
  return "\n".join(lines)
