"""The energy landscape of a trained run: what descent and the energy can find.

The sampler's MSE sees the denoiser's self-consistent answer only (docs/landscape.md):
with the score eps = dE/dy, the stationary points of E are the denoiser's fixed
points. These measures look at the energy itself, per evaluation set:

  acceptance   the descent's instruments on the standard sampler (descent.DescentStats),
               per timestep t and inner step: proposals that moved y, were rejected,
               samples frozen (a step >= 1 that did not move: the rule is deterministic,
               so every later proposal is the same; ``thawed`` counts the exceptions);
  repair       energy descent with the sampler's rule at t (step opt_step_size[t],
               bound 2 sqrt(abar_t), y = sqrt(abar_t) x) from wrong answers at known
               distances: MSE and residual against the step count;
  spearman     over candidate answers per problem, the rank correlation of E at t = 0
               with the residual and with the error; truth_below_answer per t;
  scaling      descent continued at t = 0 past the schedule: MSE against total steps;
  breadth      several trajectories per problem (other start noises, re-noised between
               timesteps at BREADTH_RENOISE), E at t = 0 choosing the answer (and, for
               scale, the task's residual choosing it); ``lost``: trajectories that end
               worse than the mean answer, and how often the energy picks one.

Every measure is a jitted function of (params, a chunk of problems, per-problem
keys): problem i draws its randomness from fold_in(key, i), so results do not
depend on the chunk size. ``measure`` runs them all over a set in chunks and
returns host numbers (JSON-ready).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd import evaluation, langevin, metrics_io, plotting, solve, strategies, train
from ired_cd import sampler as sampler_lib
from ired_cd.descent import energy_descent
from ired_cd.diffusion import ANSWER_BOX, Schedule

# Perturbation radii: RMS of the perturbation relative to the truth's RMS, per problem.
RADII = (0.05, 0.1, 0.25, 0.5)
REPAIR_TIMESTEPS = (0, 1, 2)
REPAIR_STEPS = (0, 1, 2, 5, 10, 20, 50, 100)  # reported step counts (one descent of the last)
ACCEPTANCE_INNER_STEPS = (1, 2, 5)  # besides the config's eval_inner_steps
SEGMENT = (0.25, 0.5, 0.75)  # candidates truth + s (answer - truth)
CANDIDATE_RADII = RADII + (1.0,)
CHAIN_NEGATIVES = 2
SCALING_EXTRA_STEPS = (0, 5, 10, 20, 50, 100, 200)
TRAJECTORIES = 8
BREADTH_RENOISE = (0.0, 0.3, 1.0)  # sampler.ired_sample's renoise; 0: start noise only
CHUNK = 256  # problems per compiled call
# landscape.json's format; a file of another (older) version is measured again, not read.
# 2: breadth per BREADTH_RENOISE level, with the residual's pick; 3: lost, energy_chose_lost
VERSION = 3


@dataclasses.dataclass(frozen=True)
class Probe:
  """The static pieces the measures read: a run's energy, schedule, task and CD chain.

  ``inner_steps``: the sampler's inner steps (the config's first eval_inner_steps);
  ``return_x0``: whether the sampler's output is x0 (else sqrt(abar_0) x0, the
  evaluator's default); ``residual``: the task's (inputs, x) -> (B,).
  """

  energy_fn: object
  schedule: Schedule
  out_dim: int
  residual: Callable
  loss_settings: strategies.LossSettings
  inner_steps: int
  return_x0: bool = False


def from_setup(setup, inner_steps: Optional[int] = None) -> Probe:
  """The Probe of a train.Setup (its config's sampler settings)."""
  c = setup.config
  return Probe(setup.energy_fn, setup.schedule, setup.task.out_dim, setup.task.residual,
               setup.loss_settings, c.eval_inner_steps[0] if inner_steps is None else inner_steps,
               c.eval_return_x0)


def problem_keys(key, indices, tag: int):
  """fold_in(fold_in(key, tag), i) for each problem index i: (B,) -> (B, 2)."""
  tagged = jax.random.fold_in(key, tag)
  return jax.vmap(lambda i: jax.random.fold_in(tagged, i))(indices)


def rms(x):
  """Root mean square per row, (B, D) -> (B, 1)."""
  return jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True))


def sample(probe: Probe, params, inputs, indices, key, inner_steps: int, trajectory: int = 0,
           renoise: float = 0.0):
  """The sampler from problem i's own start noise (and re-noise, if ``renoise`` > 0:
  sampler.ired_sample), with its instruments.

  Returns (output (B, D) in the sampler's convention, DescentStats (B, T, K)).
  """
  y_init = sampler_lib.start_noise(problem_keys(key, indices, 1000 + trajectory), probe.out_dim)
  renoise_keys = problem_keys(key, indices, 6000 + trajectory) if renoise else None
  return sampler_lib.ired_sample(probe.energy_fn, params, inputs, y_init, probe.schedule,
                                 inner_steps, probe.return_x0, with_stats=True,
                                 renoise_keys=renoise_keys, renoise=renoise)


def to_answer(probe: Probe, output):
  """The unscaled answer x0 from a sampler output."""
  return output if probe.return_x0 else output / probe.schedule.sqrt_alphas_cumprod[0]


def descend(probe: Probe, params, inputs, x, t: int, num_steps: int, observe=None):
  """The sampler's descent at timestep t from answers x (B, D): on y = sqrt(abar_t) x,
  step opt_step_size[t], bound 2 sqrt(abar_t). Returns (x after, DescentStats)."""
  sqrt_abar = probe.schedule.sqrt_alphas_cumprod[t]
  ts = jnp.full((x.shape[0],), t, jnp.int32)
  y, stats = energy_descent(probe.energy_fn, params, inputs, sqrt_abar * x, ts, num_steps,
                            probe.schedule.opt_step_size[t], ANSWER_BOX * sqrt_abar,
                            with_stats=True, observe=observe)
  return y / sqrt_abar, stats


def energy_at(probe: Probe, params, inputs, x, t: int):
  """E(inp, sqrt(abar_t) x, t) per problem, (B,): answers scaled as the sampler's states."""
  ts = jnp.full((x.shape[0],), t, jnp.int32)
  return probe.energy_fn(params, inputs, probe.schedule.sqrt_alphas_cumprod[t] * x, ts)[:, 0]


def errors(probe: Probe, inputs, targets, x):
  """(MSE to the truth (B,), residual (B,)) of answers x (B, D)."""
  return jnp.mean(jnp.square(x - targets), axis=-1), probe.residual(inputs, x)


def perturb(targets, keys, radius):
  """The truth plus isotropic noise of RMS ``radius`` times the truth's RMS, per problem."""
  return targets + radius * rms(targets) * sampler_lib.start_noise(keys, targets.shape[-1])


# ----------------------------------------------------------------- the measures (one chunk)
def acceptance_chunk(probe: Probe, params, inputs, targets, indices, key, inner_steps: int):
  """Per-problem instruments of the sampler at ``inner_steps``: a dict of (B, ...) arrays."""
  output, stats = sample(probe, params, inputs, indices, key, inner_steps)
  answer = to_answer(probe, output)
  return dict(stats=stats, mse=jnp.mean(jnp.square(output - targets), axis=-1),
              answer_residual=probe.residual(inputs, answer), answer=answer)


def repair_chunk(probe: Probe, params, inputs, targets, indices, mean_answer, key,
                 timesteps: Sequence[int] = REPAIR_TIMESTEPS, num_steps: int = REPAIR_STEPS[-1]):
  """MSE and residual (B, num_steps + 1) along the descent from each wrong start.

  Starts: the truth perturbed at each of RADII, and ``mean_answer`` (B, D), the
  same cheap wrong answer for every problem.
  Returns {f"t{t}": {start name: {"mse", "residual"}}}.
  """
  names = [f"r{r:g}" for r in RADII] + ["mean"]
  starts = [perturb(targets, problem_keys(key, indices, 2000 + j), r) for j, r in enumerate(RADII)]
  starts.append(mean_answer)
  # All starts as one batch (S B rows): one descent per timestep, larger products.
  count = len(starts)
  x, inputs, targets = (jnp.concatenate(a) for a in (starts, [inputs] * count, [targets] * count))
  result = {}
  for t in timesteps:
    sqrt_abar = probe.schedule.sqrt_alphas_cumprod[t]
    observe = lambda y: errors(probe, inputs, targets, y / sqrt_abar)  # noqa: E731,B023
    _, stats = descend(probe, params, inputs, x, t, num_steps, observe)
    curves = [jnp.concatenate([start[:, None], along], axis=1)  # (S B, num_steps + 1)
              for start, along in zip(errors(probe, inputs, targets, x), stats.observed)]
    result[f"t{t}"] = {name: dict(mse=mse, residual=residual) for name, mse, residual in zip(
        names, *(jnp.split(c, count) for c in curves))}
  return result


def candidates(probe: Probe, params, inputs, targets, indices, answer, key):
  """Candidate answers per problem, (C, B, D), and their names (C,).

  The truth, the model's ``answer``, points of the segment between them, the truth
  perturbed at CANDIDATE_RADII, and CD chain negatives at t = 0 (the run's chain:
  q_sample(truth, 0, mining_noise_scale eps) then mining_opt_steps Langevin steps;
  the answer is the chain's x0 estimate, as the CD loss reads it). The chains' step
  noise is drawn per chunk (langevin.sample_negatives), the rest per problem.
  """
  names = ["truth", "answer"] + [f"segment{s:g}" for s in SEGMENT]
  points = [targets, answer] + [targets + s * (answer - targets) for s in SEGMENT]
  for j, r in enumerate(CANDIDATE_RADII):
    names.append(f"r{r:g}")
    points.append(perturb(targets, problem_keys(key, indices, 3000 + j), r))
  settings = probe.loss_settings
  t0 = jnp.zeros((targets.shape[0],), jnp.int32)
  for j in range(CHAIN_NEGATIVES):
    eps = sampler_lib.start_noise(problem_keys(key, indices, 4000 + j), targets.shape[-1])
    x_init = probe.schedule.q_sample(targets, t0, settings.mining_noise_scale * eps)
    x_neg, _ = langevin.sample_negatives(
        probe.energy_fn, params, inputs, x_init, t0, jax.random.fold_in(key, 5000 + j),
        settings.mining_opt_steps, probe.schedule, settings.langevin_sigma_multiplier,
        settings.langevin_grad_clip)
    names.append(f"chain{j}")
    points.append(probe.schedule.x0_estimate(x_neg, t0))
  return jnp.stack(points), names


def spearman(a, b):
  """Spearman's rank correlation along axis 0 (no ties expected): (C, B), (C, B) -> (B,)."""
  def ranks(x):
    r = jnp.argsort(jnp.argsort(x, axis=0), axis=0).astype(jnp.float32)
    return r - jnp.mean(r, axis=0)
  ra, rb = ranks(a), ranks(b)
  return jnp.sum(ra * rb, axis=0) / jnp.sqrt(jnp.sum(ra * ra, axis=0) * jnp.sum(rb * rb, axis=0))


def ranking_chunk(probe: Probe, params, inputs, targets, indices, answer, key):
  """Spearman(E at t = 0, residual) and (E, error) over the candidates, (B,) each, and
  truth_below_answer (B, T): E_t(truth) < E_t(answer), both scaled by sqrt(abar_t)."""
  points, _ = candidates(probe, params, inputs, targets, indices, answer, key)
  energy = jax.vmap(lambda x: energy_at(probe, params, inputs, x, 0))(points)
  mse, residual = jax.vmap(lambda x: errors(probe, inputs, targets, x))(points)
  below = jnp.stack([energy_at(probe, params, inputs, targets, t)
                     < energy_at(probe, params, inputs, answer, t)
                     for t in range(probe.schedule.num_timesteps)], axis=1)
  return dict(spearman_residual=spearman(energy, residual), spearman_error=spearman(energy, mse),
              truth_below_answer=below)


def scaling_chunk(probe: Probe, params, inputs, targets, indices, answer, key,
                  num_steps: int = SCALING_EXTRA_STEPS[-1]):
  """``num_steps`` more descent steps at t = 0 (one descent) from the sampler's
  ``answer``: the MSE of the sampler's output after each, (B, num_steps + 1)."""
  del indices, key  # deterministic
  sqrt_abar = probe.schedule.sqrt_alphas_cumprod[0]
  output = lambda y: y / sqrt_abar if probe.return_x0 else y  # noqa: E731
  observe = lambda y: jnp.mean(jnp.square(output(y) - targets), axis=-1)  # noqa: E731
  _, stats = descend(probe, params, inputs, answer, 0, num_steps, observe)
  return dict(mse=jnp.concatenate([observe(sqrt_abar * answer)[:, None], stats.observed], 1))


def breadth_chunk(probe: Probe, params, inputs, targets, indices, key,
                  trajectories: int = TRAJECTORIES, renoise: float = 0.0):
  """The sampler from several start noises (re-noised between timesteps with ``renoise``):
  each answer's MSE, energy at t = 0 and residual, (B, trajectories) each."""
  def trajectory(j):
    output, _ = sample(probe, params, inputs, indices, key, probe.inner_steps, j, renoise)
    answer = to_answer(probe, output)
    return (jnp.mean(jnp.square(output - targets), axis=-1),
            energy_at(probe, params, inputs, answer, 0), probe.residual(inputs, answer))
  mse, energy, residual = jax.lax.map(trajectory, jnp.arange(trajectories))
  return dict(mse=mse.T, energy=energy.T, residual=residual.T)


def summarize_breadth(per_level: Sequence[Dict[str, np.ndarray]],
                      mean_answer_mse: np.ndarray) -> Dict[str, list]:
  """Host summary of breadth_chunk's arrays over a set, one entry per BREADTH_RENOISE level:
  the MSE of the answer the energy picks (lowest E), of the one the residual picks, of a
  trajectory on average and of the best one; ``energy_beats_mean``: problems whose energy
  pick is better than their trajectories' mean MSE; ``lost``: trajectories whose MSE exceeds
  the mean answer's on their problem (``mean_answer_mse``, (B,)); ``energy_chose_lost``:
  problems whose energy pick is lost."""
  def pick(values, by):
    return np.take_along_axis(values["mse"], np.argmin(values[by], 1)[:, None], 1)[:, 0]
  columns = dict(mse_energy_chosen=[], mse_residual_chosen=[], mse_mean_trajectory=[],
                 mse_oracle=[], energy_beats_mean=[], lost=[], energy_chose_lost=[])
  for values in per_level:
    chosen = pick(values, "energy")
    lost = values["mse"] > mean_answer_mse[:, None]
    for name, value in (("mse_energy_chosen", np.mean(chosen)),
                        ("mse_residual_chosen", np.mean(pick(values, "residual"))),
                        ("mse_mean_trajectory", np.mean(values["mse"])),
                        ("mse_oracle", np.mean(np.min(values["mse"], axis=1))),
                        ("energy_beats_mean", np.mean(chosen < np.mean(values["mse"], 1))),
                        ("lost", np.mean(lost)),
                        ("energy_chose_lost", np.mean(chosen > mean_answer_mse))):
      columns[name].append(float(value))
  return columns


# ----------------------------------------------------------------- over a set, on the host
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


def summarize_acceptance(values) -> Dict:
  """Host summary of acceptance_chunk's arrays over a set (summarize_stats, mse, residual)."""
  return dict(summarize_stats(values["stats"]), mse=float(np.mean(values["mse"])),
              answer_residual=float(np.mean(values["answer_residual"])))


def describe_descent(model: solve.Model, problems: np.ndarray, inner_steps: int,
                     seed: int = 0) -> str:
  """The instruments of the sampler on ``problems`` (n, inp_dim) as text, one line per
  timestep (experiments.solve --descent_stats)."""
  setup = train.build_setup(model.config)
  sample_with_stats = sampler_lib.make_sampler(setup.energy_fn, setup.schedule,
                                               setup.task.out_dim, True, with_stats=True)
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


def spread(values) -> Dict[str, float]:
  """{'mean', 'std'} over problems."""
  return dict(mean=float(np.mean(values)), std=float(np.std(values)))


def measure(probe: Probe, params, sets: Dict[str, Tuple[np.ndarray, np.ndarray]], key,
            mean_answer, chunk: int, acceptance_steps: Optional[Sequence[int]] = None,
            trajectories: Optional[int] = None) -> Dict:
  """Every measure on each set {suffix: (inputs (N, inp_dim), targets (N, D))}: JSON-ready
  {'acceptance' + suffix: ..., 'repair' + suffix, 'energy_residual_spearman' + suffix,
  'energy_error_spearman' + suffix, 'truth_below_answer' + suffix, 'scaling' + suffix,
  'breadth' + suffix}; ``mean_answer`` (D,) is repair's cheap wrong start. Inner-step
  counts besides the config's: ACCEPTANCE_INNER_STEPS; breadth: TRAJECTORIES at each
  of BREADTH_RENOISE."""
  acceptance_steps = ACCEPTANCE_INNER_STEPS if acceptance_steps is None else acceptance_steps
  trajectories = trajectories or TRAJECTORIES
  cache = {}

  def run(f, arrays, **kw):  # one compiled function per measure, shared by the sets
    name = (f.__name__,) + tuple(sorted(kw.items()))
    if name not in cache:
      cache[name] = jax.jit(lambda params, *a: f(probe, params, *a, key, **kw))
    return map_chunks(functools.partial(cache[name], params), arrays, chunk)

  result = {}
  for suffix, (inputs, targets) in sets.items():
    data = (inputs, targets, np.arange(inputs.shape[0], dtype=np.int32))
    acceptance = {}
    for k in sorted(set(acceptance_steps) | {probe.inner_steps}):
      values = run(acceptance_chunk, data, inner_steps=k)
      if k == probe.inner_steps:
        answers = values["answer"]
      acceptance[f"k{k}"] = summarize_acceptance(values)
    repair = run(repair_chunk, data + (np.broadcast_to(mean_answer, targets.shape),))
    ranking = run(ranking_chunk, data + (answers,))
    scaling = run(scaling_chunk, data + (answers,))
    breadth = [run(breadth_chunk, data, trajectories=trajectories, renoise=r)
               for r in BREADTH_RENOISE]
    extra = np.asarray(SCALING_EXTRA_STEPS)
    result.update({
        f"acceptance{suffix}": acceptance,
        f"repair{suffix}": dict(
            steps=list(REPAIR_STEPS), radii=list(RADII),
            **{t: {name: {m: np.mean(v[m], axis=0)[list(REPAIR_STEPS)].tolist() for m in v}
                   for name, v in per_start.items()} for t, per_start in repair.items()}),
        f"energy_residual_spearman{suffix}": spread(ranking["spearman_residual"]),
        f"energy_error_spearman{suffix}": spread(ranking["spearman_error"]),
        f"truth_below_answer{suffix}": np.mean(ranking["truth_below_answer"], axis=0).tolist(),
        f"scaling{suffix}": dict(
            extra_steps=extra.tolist(),
            total_steps=(extra + probe.schedule.num_timesteps * probe.inner_steps).tolist(),
            mse=np.mean(scaling["mse"], axis=0)[extra].tolist()),
        f"breadth{suffix}": dict(
            trajectories=trajectories, renoise=list(BREADTH_RENOISE),
            **summarize_breadth(breadth, np.mean(np.square(mean_answer - targets), axis=-1)))})
  return result


def summary(landscape: Dict) -> Dict[str, float]:
  """A few scalar columns of a landscape.json (e.g. for the ablation's table), per set:
  moved_after_first (mean over t and inner steps >= 1 at the config's count),
  repair_r0.25 (MSE after the last repair step at t = 0 from radius 0.25, relative to
  its start), spearman_residual, truth_below_answer (t = 0), scaling_gain (MSE after
  the most extra steps / at none), breadth_gain (energy-chosen / mean trajectory, start
  noise only), breadth_renoised_gain and breadth_renoised_residual_gain (the energy's and
  the residual's pick at the largest renoise / the sampler's answer without re-noise),
  breadth_renoised_lost (trajectories worse than the mean answer, largest renoise) and
  breadth_renoised_chose_lost (problems whose energy pick is one)."""
  columns = {}
  k = landscape["run"]["inner_steps"]
  for suffix in ("", "_ood"):
    moved = np.asarray(landscape[f"acceptance{suffix}"][f"k{k}"]["moved"])
    repair = landscape[f"repair{suffix}"]["t0"]["r0.25"]["mse"]
    scaling = landscape[f"scaling{suffix}"]["mse"]
    breadth = landscape[f"breadth{suffix}"]
    columns.update({
        f"moved_after_first{suffix}": float(moved[:, 1:].mean()) if moved.shape[1] > 1 else 0.0,
        f"repair_r0.25{suffix}": repair[-1] / repair[0],
        f"spearman_residual{suffix}": landscape[f"energy_residual_spearman{suffix}"]["mean"],
        f"truth_below_answer{suffix}": landscape[f"truth_below_answer{suffix}"][0],
        f"scaling_gain{suffix}": scaling[-1] / scaling[0],
        f"breadth_gain{suffix}": (breadth["mse_energy_chosen"][0]
                                  / breadth["mse_mean_trajectory"][0]),
        f"breadth_renoised_gain{suffix}": (breadth["mse_energy_chosen"][-1]
                                           / breadth["mse_mean_trajectory"][0]),
        f"breadth_renoised_residual_gain{suffix}": (breadth["mse_residual_chosen"][-1]
                                                    / breadth["mse_mean_trajectory"][0]),
        f"breadth_renoised_lost{suffix}": breadth["lost"][-1],
        f"breadth_renoised_chose_lost{suffix}": breadth["energy_chose_lost"][-1]})
  return columns


def evaluate_run(workdir: str, eval_size: int = 256, checkpoint_step: Optional[int] = None,
                 matmul_dtype: Optional[str] = None, seed: int = 0) -> Dict:
  """``measure`` on a run's EMA parameters (solve.load) and the Evaluator's sets of
  ``eval_size`` problems; ``matmul_dtype`` overrides the run's. With the run's identity
  under 'run'. Raises solve.SolveError for a bad workdir or checkpoint_step."""
  model = solve.load(workdir, checkpoint_step)
  config = model.config.copy_and_resolve_references()
  config.matmul_dtype = matmul_dtype or config.matmul_dtype
  setup = train.build_setup(config)
  sets = evaluation.Evaluator(setup, size=eval_size).sets
  probe = from_setup(setup)
  result = measure(probe, model.params, sets, jax.random.PRNGKey(seed),
                   sets[""][1].mean(axis=0), min(CHUNK, eval_size))
  result["run"] = dict(
      version=VERSION, workdir=os.path.abspath(workdir), strategy=config.mining_strategy, seed=config.seed,
      step=model.step, matmul_dtype=config.matmul_dtype, eval_size=eval_size,
      eval_seed=config.eval_seed, landscape_seed=seed, inner_steps=probe.inner_steps,
      sampler_output="x0" if probe.return_x0 else "sqrt(abar_0) x0")
  return result


def write(workdir: str, result: Dict) -> Tuple[str, str]:
  """WORKDIR/landscape.json and landscape.png, each through a temporary file and a rename."""
  json_path = os.path.join(workdir, "landscape.json")
  metrics_io.write_json_atomic(json_path, result)
  return json_path, plotting.plot_landscape(result, os.path.join(workdir, "landscape.png"))
