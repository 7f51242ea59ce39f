"""The energy landscape of a task with many right answers (a discrete task): does the energy
put right answers below wrong ones, treat them alike, and draw wrong answers to them?

Per evaluation set (the evaluator's first ``eval_size`` problems and keys), with up to
``Settings.solutions`` right answers of each problem (task.valid_answers: enumerated by a
SAT solver, a uniform sample of the first ``enumeration_cap``), every energy read at the
noise-free state of timestep t (landscape.energy_at):

  one_flip  P[E(valid) < E(invalid)] over pairs one change apart (a flipped variable, a
            recoloured node: task.neighbours), per timestep t; 0.5 is an energy blind to
            what is right;
  answer    over the problems whose sampler answer (the plain sampler: eval/solved's) is
            wrong: P[some valid answer has a lower E at t = 0 than the answer] and the mean
            P[E(valid) < E(answer)], for the answer as the sampler leaves it (``raw``) and as
            its decoded assignment (``decoded``);
  repair    from valid answers with j random changes (task.changed), the share that the
            sampler's descent at t = 0 (landscape.descend) brings to some valid answer after
            each number of steps (step 0: the starts that are valid already, the baseline),
            and the share back at the answer it started from;
  spread    per problem, E's standard deviation over its valid answers beside that over as
            many random assignments, and P[E(valid) < E(random)].
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd import instruments, landscape

KIND = "answers"  # landscape.json's settings say which measures it holds
ANSWER_TAG = 31  # this module's host stream: default_rng([ANSWER_TAG, seed, ood])


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a measurement depends on besides the checkpoint (landscape.json's cache key).

  solutions: valid answers kept per problem; changes: j of repair; repair_answers: the valid
  answers per problem repair starts from; matmul_dtype: as landscape.Settings."""

  eval_size: int = 256
  seed: int = 0
  matmul_dtype: str = "float32"
  solutions: int = 8
  enumeration_cap: int = 4096
  changes: Tuple[int, ...] = (1, 2, 4)
  repair_answers: int = 2
  repair_steps: Tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50)
  chunk: int = 1024  # rows per compiled call
  kind: str = KIND
  format: int = 1

  discrete = True  # the measures of a discrete task (landscape.check_task)

  def as_json(self) -> Dict:
    return landscape.json_ready(dataclasses.asdict(self))

  def measure(self, probe, params, evaluator) -> Dict:
    return measure(probe, evaluator.setup.task, params, evaluator.sets, evaluator.keys)

  def plot(self, result, path: str) -> str:
    from ired_cd import plotting  # noqa: PLC0415 - measuring never loads matplotlib
    return plotting.plot_answer_landscape(result, path)


class Programs:
  """The measures' jitted functions of one probe and task (each compiled once per shape)."""

  def __init__(self, probe, task):
    self.probe, self.task = probe, task
    schedule = probe.schedule

    def energy(params, inputs, x, t):  # rows (B, ...), t (B,) -> (B,)
      state = schedule.sqrt_alphas_cumprod[t][:, None] * x
      return probe.energy_fn(params, inputs, state, t)[:, 0]

    def descend(params, inputs, x):  # -> (x after, violations (B, steps + 1))
      observe = lambda x_: task.residual(inputs, x_)  # noqa: E731
      after, stats = landscape.descend(probe, params, inputs, x, 0,
                                       probe.settings.repair_steps[-1], observe)
      return after, jnp.concatenate([observe(x)[:, None], stats.observed], axis=1)

    def sample(params, inputs, keys):  # the plain sampler's outputs (B, D)
      return landscape.sample(probe, params, inputs, keys, probe.inner_steps)

    self.energy, self.descend, self.sample = jax.jit(energy), jax.jit(descend), jax.jit(sample)

  def energies(self, params, inputs, answers, t: int) -> np.ndarray:
    """E at timestep t of answers (N, M, D), problem i's with inputs[i]: (N, M)."""
    n, m, d = answers.shape
    rows = (np.repeat(inputs, m, axis=0), answers.reshape(n * m, d),
            np.full((n * m,), t, np.int32))
    return instruments.map_chunks(functools.partial(self.energy, params), rows,
                                  self.probe.settings.chunk).reshape(n, m)


def masked_mean(values, mask, axis=None):
  """The mean of ``values`` where ``mask`` (nan where none)."""
  count = np.sum(mask, axis=axis)
  return np.where(count > 0, np.sum(np.where(mask, values, 0), axis=axis) / np.maximum(count, 1),
                  np.nan)


def one_flip(programs: Programs, params, inputs, valid, kept) -> Dict:
  """P[E(valid) < E(invalid neighbour)] per timestep: the mean over problems of each
  problem's share of pairs. valid (N, S, P), kept (N, S) bool."""
  task = programs.task
  n, s, size = valid.shape
  neighbours = task.neighbours(valid.reshape(n * s, size))  # (N S, M, P)
  m = neighbours.shape[1]
  wrong = task.verify(np.repeat(inputs, s * m, axis=0), neighbours.reshape(-1, size)) > 0
  pairs = kept[:, :, None] & wrong.reshape(n, s, m)
  x_valid = task.encode(valid.reshape(-1, size)).reshape(n, s, -1)
  x_neighbours = task.encode(neighbours.reshape(-1, size)).reshape(n, s * m, -1)
  below = []
  for t in range(programs.probe.schedule.num_timesteps):
    e_valid = programs.energies(params, inputs, x_valid, t)
    e_neighbours = programs.energies(params, inputs, x_neighbours, t).reshape(n, s, m)
    per_problem = masked_mean(e_valid[:, :, None] < e_neighbours, pairs, axis=(1, 2))
    below.append(float(np.nanmean(per_problem)))
  return dict(below=below, pairs_per_problem=float(np.mean(np.sum(pairs, axis=(1, 2)))),
              neighbours=m, valid_neighbours=float(np.mean(~wrong)))


def answer_ranks(programs: Programs, params, inputs, keys, e_valid, kept) -> Dict:
  """Valid answers against the sampler's wrong answers, at t = 0 (``e_valid`` (N, S))."""
  probe, task = programs.probe, programs.task
  output = instruments.map_chunks(functools.partial(programs.sample, params), (inputs, keys),
                                  min(probe.settings.chunk, len(inputs)))
  raw = np.asarray(probe.answer(output))
  decoded = task.decode(raw)
  wrong = task.verify(inputs, decoded) > 0
  result = dict(wrong=float(np.mean(wrong)))
  for name, answer in (("raw", raw), ("decoded", task.encode(decoded))):
    e_answer = programs.energies(params, inputs, answer[:, None], 0)  # (N, 1)
    below = (e_valid < e_answer) & kept
    result[f"some_valid_below_{name}"] = float(masked_mean(np.any(below, axis=1), wrong))
    result[f"valid_below_{name}"] = float(masked_mean(
        np.sum(below, axis=1) / np.sum(kept, axis=1), wrong))
  return result


def repair(programs: Programs, params, inputs, valid, kept, rng) -> Dict:
  """Per j of the settings' changes: {'valid': share valid after each reported step,
  'back': share at its start answer after the most steps}."""
  settings, task = programs.probe.settings, programs.task
  n, _, size = valid.shape
  r = min(settings.repair_answers, valid.shape[1])
  origins = valid[:, :r].reshape(n * r, size)
  mask = kept[:, :r].reshape(-1)
  rows_inputs = np.repeat(inputs, r, axis=0)
  result = dict(steps=list(settings.repair_steps), answers_per_problem=r)
  for j in settings.changes:
    starts = task.encode(task.changed(origins, j, rng))
    after, violations = instruments.map_chunks(functools.partial(programs.descend, params),
                                               (rows_inputs, starts), settings.chunk)
    valid_curve = masked_mean(violations == 0, mask[:, None], axis=0)
    back = task.canonical(task.decode(after)) == task.canonical(origins)
    result[f"j{j}"] = dict(valid=valid_curve[list(settings.repair_steps)].tolist(),
                           back=float(masked_mean(np.all(back, axis=1), mask)))
  return result


def spread(programs: Programs, params, inputs, e_valid, kept, rng) -> Dict:
  """E at t = 0 over each problem's valid answers against as many random assignments."""
  task = programs.task
  n, s = e_valid.shape
  randoms = task.random_assignment(np.repeat(inputs, s, axis=0), rng)
  e_random = programs.energies(params, inputs, task.encode(randoms).reshape(n, s, -1), 0)
  several = np.sum(kept, axis=1) >= 2
  valid_std = np.sqrt(masked_mean(np.square(e_valid - masked_mean(e_valid, kept, 1)[:, None]),
                                  kept, axis=1))
  below = masked_mean((e_valid[:, :, None] < e_random[:, None, :]),
                      np.broadcast_to(kept[:, :, None], (n, s, s)), axis=(1, 2))
  return dict(valid_std=float(masked_mean(valid_std, several)),
              random_std=float(np.mean(np.std(e_random, axis=1))),
              valid_mean=float(np.mean(masked_mean(e_valid, kept, 1))),
              random_mean=float(np.mean(e_random)), valid_below_random=float(np.mean(below)),
              problems_with_several=float(np.mean(several)))


def measure(probe, task, params, sets, keys) -> Dict:
  """Every measure on each set {suffix: (inputs, targets)} (problem i with ``keys[i]``, the
  evaluator's): JSON-ready {'answers' + suffix, 'one_flip' + suffix, 'answer' + suffix,
  'repair' + suffix, 'spread' + suffix}."""
  settings = probe.settings
  programs = Programs(probe, task)
  result = {}
  for suffix, (inputs, _) in sets.items():
    rng = np.random.default_rng([ANSWER_TAG, settings.seed, int(suffix == "_ood")])
    valid, counts, totals = task.valid_answers(inputs, settings.solutions, rng,
                                               settings.enumeration_cap)
    kept = np.arange(settings.solutions)[None, :] < counts[:, None]
    x_valid = task.encode(valid.reshape(-1, valid.shape[-1])).reshape(len(inputs),
                                                                      settings.solutions, -1)
    e_valid = programs.energies(params, inputs, x_valid, 0)
    result.update({
        f"answers{suffix}": dict(kept=float(np.mean(counts)),
                                 enumerated_median=float(np.median(totals)),
                                 capped=float(np.mean(totals >= settings.enumeration_cap))),
        f"one_flip{suffix}": one_flip(programs, params, inputs, valid, kept),
        f"answer{suffix}": answer_ranks(programs, params, inputs, keys[:len(inputs)], e_valid,
                                        kept),
        f"repair{suffix}": repair(programs, params, inputs, valid, kept, rng),
        f"spread{suffix}": spread(programs, params, inputs, e_valid, kept, rng)})
  return result


def columns(settings: Dict):
  """The ablation's columns (``summary``'s keys, each per set) for a landscape.json's
  ``settings``: (key, header, format)."""
  changes = settings["changes"]
  return ((("one_flip_below", "P[E(valid) < E(invalid)] one change apart, t=0", ".3f"),
           ("one_flip_below_best_t", "the same, at its best t", ".3f"),
           ("some_valid_below_answer", "P[a valid answer below the sampler's wrong one]", ".3f"),
           (f"repair_j{changes[0]}_start", f"valid after {_changes(changes[0])}", ".3f"))
          + tuple((f"repair_j{j}", f"valid after {_changes(j)} and descent at t=0", ".3f")
                  for j in changes)
          + (("valid_std", "std of E over valid answers", ".3g"),
             ("random_std", "std of E over random assignments", ".3g"),
             ("valid_below_random", "P[E(valid) < E(random)]", ".3f")))


def _changes(j: int) -> str:
  return f"{j} change" + ("s" if j > 1 else "")


def describe(settings: Dict) -> str:
  """The measurement's settings (landscape.json's) in words, for the ablation's report."""
  return (f"{settings['eval_size']} problems per set, {settings['matmul_dtype']} products, up "
          f"to {settings['solutions']} valid answers each (docs/reasoning.md); repair: "
          f"{settings['repair_steps'][-1]} descent steps")


def measures_for(task):
  """The landscape measures of ``task``'s kind: ``landscape`` for a continuous task (one
  right answer), this module for a discrete one."""
  return sys.modules[__name__] if task.discrete else landscape


def measures_of(settings: Dict):
  """The module whose measures a landscape.json's ``settings`` name."""
  return sys.modules[__name__] if settings.get("kind") == KIND else landscape


def summary(result: Dict) -> Dict[str, float]:
  """A few scalar columns of a landscape.json of these measures, per set: one_flip_below
  (t = 0) and its largest over t, some_valid_below_answer (decoded), repair_j{j} (valid
  after the most steps) beside repair_j{j}_start (valid before any), valid_std and
  random_std (E over valid answers, over random assignments), valid_below_random."""
  columns = {}
  for suffix in ("", "_ood"):
    below = result[f"one_flip{suffix}"]["below"]
    columns[f"one_flip_below{suffix}"] = below[0]
    columns[f"one_flip_below_best_t{suffix}"] = max(below)
    columns[f"some_valid_below_answer{suffix}"] = \
        result[f"answer{suffix}"]["some_valid_below_decoded"]
    repaired = result[f"repair{suffix}"]
    for j in (k for k in repaired if k.startswith("j")):
      columns[f"repair_{j}{suffix}"] = repaired[j]["valid"][-1]
      columns[f"repair_{j}_start{suffix}"] = repaired[j]["valid"][0]
    for name in ("valid_std", "random_std", "valid_below_random"):
      columns[f"{name}{suffix}"] = result[f"spread{suffix}"][name]
  return columns
