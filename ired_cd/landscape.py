"""The energy landscape of a trained run: what descent and the energy can find.

The sampler's MSE sees the denoiser's self-consistent answer only (docs/landscape.md):
with the score eps = dE/dy, the stationary points of E are the denoiser's fixed
points. These measures look at the energy itself, per evaluation set (a continuous
task's: the target is the one right answer):

  acceptance   the descent's instruments on the standard sampler (descent.DescentStats),
               per timestep t and inner step: proposals that moved y, were rejected,
               samples frozen (a step >= 1 that did not move: the rule is deterministic,
               so every later proposal is the same; ``thawed`` counts the exceptions);
  repair       the sampler's descent at t (descent.descend_at, from y = sqrt(abar_t)
               clip_answer(x)) from wrong answers at known distances: MSE and residual
               against the step count;
  spearman     over candidate answers per problem, the rank correlation of E at t = 0
               with the residual and with the error; truth_below_answer per t;
  scaling      descent continued at t = 0 past the schedule: MSE against total steps;
  breadth      several trajectories per problem (other start noises, re-noised between
               timesteps at ``Settings.breadth_renoise``), E at t = 0 choosing the answer
               (and, for scale, the task's residual choosing it); ``lost``: trajectories
               that end worse than the mean predictor, and how often the energy picks one.

One sampler and one key scheme with the evaluation: problem i of a set has the
evaluator's key (fold_in(PRNGKey(eval_seed), i)), the plain sampler is the
evaluator's (so ``acceptance``'s MSE at the run's inner steps is its eval/mse), and
every other stream is ``sampler.stream`` of that key. "mse" means, everywhere, the
MSE of what the sampler outputs (sqrt(abar_0) x0, or x0 with eval_return_x0) against
the target, as eval/mse does; "the mean predictor" is the evaluator's
(task.mean_target). ``Settings`` is everything a measurement depends on besides the
run's checkpoint: written into landscape.json, it is the key its reuse is decided by.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd import evaluation, instruments, langevin, metrics_io, solve, strategies, train
from ired_cd import sampler as sampler_lib
from ired_cd import workdir_lock
from ired_cd.descent import descend_at
from ired_cd.diffusion import Schedule, clip_answer

# landscape.json's layout; part of the settings, so a file of another layout is measured
# again, not read. 4: settings, one key scheme with the evaluation, one meaning of mse.
FORMAT = 4
# The landscape's streams of a problem's key (sampler.stream): perturbations for repair
# and for the candidates, the candidates' chain starts, the chains' step noise.
REPAIR_STREAM, CANDIDATE_STREAM, CHAIN_STREAM = 11, 12, 13


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a measurement depends on besides the checkpoint (its cache key).

  radii: perturbations' RMS relative to the truth's, per problem; candidate radii add 1.
  breadth_renoise: sampler.ired_sample's re-noise levels (must hold 0: start noise only).
  seed: the landscape's own randomness (perturbations, chains); the trajectories use the
  evaluator's keys. matmul_dtype: the products' operands (model.MATMUL_DTYPES), float32 by
  default whatever the run trained with.
  """

  eval_size: int = 256
  seed: int = 0
  matmul_dtype: str = "float32"
  radii: Tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)
  repair_timesteps: Tuple[int, ...] = (0, 1, 2)
  repair_steps: Tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50, 100)  # reported (one descent)
  acceptance_inner_steps: Tuple[int, ...] = (1, 2, 5)  # besides the run's eval_inner_steps
  segment: Tuple[float, ...] = (0.25, 0.5, 0.75)  # candidates truth + s (answer - truth)
  chain_negatives: int = 2
  scaling_extra_steps: Tuple[int, ...] = (0, 5, 10, 20, 50, 100, 200)
  trajectories: int = 8
  breadth_renoise: Tuple[float, ...] = (0.0, 0.3, 1.0)
  chunk: int = 256  # problems per compiled call
  format: int = FORMAT

  discrete = False  # the measures of a continuous task (check_task)

  def measure(self, probe: "Probe", params, evaluator) -> Dict:
    """``measure`` on the evaluator's sets, with its mean predictor."""
    return measure(probe, params, evaluator.sets, evaluator.keys,
                   evaluator.setup.task.mean_target(evaluator.seed))

  def plot(self, result: Dict, path: str) -> str:
    from ired_cd import plotting  # noqa: PLC0415 - measuring never loads matplotlib
    return plotting.plot_landscape(result, path)

  @property
  def candidate_radii(self) -> Tuple[float, ...]:
    return self.radii + (1.0,)

  def as_json(self) -> Dict:
    return json_ready(dataclasses.asdict(self))


def json_ready(value):
  """Tuples as lists, recursively (how JSON reads them back)."""
  if isinstance(value, dict):
    return {k: json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(v) for v in value]
  return value


@dataclasses.dataclass(frozen=True)
class Probe:
  """The static pieces the measures read: a run's energy, schedule, task, CD chain and
  sampler settings (``inner_steps``: the config's first eval_inner_steps; ``return_x0``:
  whether the sampler outputs x0, else sqrt(abar_0) x0)."""

  energy_fn: object
  schedule: Schedule
  residual: Callable
  loss_settings: strategies.LossSettings
  inner_steps: int
  return_x0: bool
  settings: Settings

  def output(self, x):
    """The sampler's output for answers x: x, or sqrt(abar_0) x (what eval/mse scores)."""
    return x if self.return_x0 else self.schedule.sqrt_alphas_cumprod[0] * x

  def answer(self, output):
    """The unscaled answer x0 of a sampler output."""
    return output if self.return_x0 else output / self.schedule.sqrt_alphas_cumprod[0]


def from_setup(setup, settings: Settings) -> Probe:
  """The Probe of a train.Setup (its config's sampler settings)."""
  c = setup.config
  return Probe(setup.energy_fn, setup.schedule, setup.task.residual, setup.loss_settings,
               c.eval_inner_steps[0], c.eval_return_x0, settings)


def rms(x):
  """Root mean square per row, (B, D) -> (B, 1)."""
  return jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True))


def sample(probe: Probe, params, inputs, keys, inner_steps: int, trajectory: int = 0,
           renoise: float = 0.0, with_stats: bool = False):
  """The sampler's output (B, D) from each problem's key (sampler.sample_from_keys: the
  evaluator's sampler for trajectory 0 without re-noise), and its DescentStats with
  ``with_stats``."""
  return sampler_lib.sample_from_keys(probe.energy_fn, params, inputs, keys, probe.schedule,
                                      inner_steps, probe.return_x0, with_stats, trajectory,
                                      renoise)


def descend(probe: Probe, params, inputs, x, t: int, num_steps: int, observe=None):
  """The sampler's descent at timestep t (descent.descend_at) from answers x (B, D), put in
  its state y = sqrt(abar_t) clip_answer(x) as the sampler puts its answers. Returns (x after,
  DescentStats); ``observe`` sees the answers x after each step."""
  sqrt_abar = probe.schedule.sqrt_alphas_cumprod[t]
  watch = None if observe is None else (lambda y: observe(y / sqrt_abar))
  y, stats = descend_at(probe.energy_fn, params, inputs, clip_answer(x), t, num_steps,
                        probe.schedule, with_stats=True, observe=watch)
  return y / sqrt_abar, stats


def energy_at(probe: Probe, params, inputs, x, t: int):
  """E(inp, sqrt(abar_t) x, t) per problem, (B,): answers scaled as the sampler's states."""
  ts = jnp.full((x.shape[0],), t, jnp.int32)
  return probe.energy_fn(params, inputs, probe.schedule.sqrt_alphas_cumprod[t] * x, ts)[:, 0]


def errors(probe: Probe, inputs, targets, x):
  """(MSE of the output (B,), residual of the answer (B,)) for answers x (B, D)."""
  return jnp.mean(jnp.square(probe.output(x) - targets), axis=-1), probe.residual(inputs, x)


def perturb(targets, keys, radius):
  """The truth plus isotropic noise of RMS ``radius`` times the truth's RMS, per problem."""
  return targets + radius * rms(targets) * sampler_lib.start_noise(keys, targets.shape[-1])


def _stream(probe: Probe, keys, tag: int, index: int = 0):
  """The landscape's stream ``tag`` of each problem's key, under its seed."""
  return sampler_lib.stream(sampler_lib.stream(keys, tag, probe.settings.seed), tag, index)


# ----------------------------------------------------------------- the measures (one chunk)
def acceptance_chunk(probe: Probe, params, inputs, targets, keys, inner_steps: int):
  """Per-problem instruments of the sampler at ``inner_steps``: a dict of (B, ...) arrays."""
  output, stats = sample(probe, params, inputs, keys, inner_steps, with_stats=True)
  answer = probe.answer(output)
  return dict(stats=stats, mse=jnp.mean(jnp.square(output - targets), axis=-1),
              answer_residual=probe.residual(inputs, answer), answer=answer)


def repair_chunk(probe: Probe, params, inputs, targets, keys, mean_answer):
  """MSE and residual (B, steps + 1) along the descent from each wrong start, for each of
  the settings' repair timesteps: the truth perturbed at each radius, and
  ``mean_answer`` (B, D), the mean predictor's answer.
  Returns {f"t{t}": {start name: {"mse", "residual"}}}."""
  settings = probe.settings
  names = [f"r{r:g}" for r in settings.radii] + ["mean"]
  starts = [perturb(targets, _stream(probe, keys, REPAIR_STREAM, j), r)
            for j, r in enumerate(settings.radii)]
  starts.append(mean_answer)
  # All starts as one batch (S B rows): one descent per timestep, larger products.
  count = len(starts)
  x, inputs, targets = (jnp.concatenate(a) for a in (starts, [inputs] * count, [targets] * count))
  result = {}
  for t in settings.repair_timesteps:
    observe = lambda x_: errors(probe, inputs, targets, x_)  # noqa: E731
    _, stats = descend(probe, params, inputs, x, t, settings.repair_steps[-1], observe)
    curves = [jnp.concatenate([start[:, None], along], axis=1)  # (S B, steps + 1)
              for start, along in zip(errors(probe, inputs, targets, x), stats.observed)]
    result[f"t{t}"] = {name: dict(mse=mse, residual=residual) for name, mse, residual in zip(
        names, *(jnp.split(c, count) for c in curves))}
  return result


def candidates(probe: Probe, params, inputs, targets, keys, answer):
  """Candidate answers per problem, (C, B, D), and their names (C,).

  The truth, the model's ``answer``, points of the segment between them, the truth
  perturbed at the candidate radii, and CD chain negatives at t = 0 (the run's chain:
  q_sample(truth, 0, mining_noise_scale eps) then mining_opt_steps Langevin steps;
  the answer is the chain's x0 estimate, as the CD loss reads it). The chains' step
  noise is drawn per chunk (langevin.sample_negatives), the rest per problem.
  """
  settings = probe.settings
  names = ["truth", "answer"] + [f"segment{s:g}" for s in settings.segment]
  points = [targets, answer] + [targets + s * (answer - targets) for s in settings.segment]
  for j, r in enumerate(settings.candidate_radii):
    names.append(f"r{r:g}")
    points.append(perturb(targets, _stream(probe, keys, CANDIDATE_STREAM, j), r))
  chain = probe.loss_settings
  t0 = jnp.zeros((targets.shape[0],), jnp.int32)
  for j in range(settings.chain_negatives):
    eps = sampler_lib.start_noise(_stream(probe, keys, CHAIN_STREAM, j), targets.shape[-1])
    x_init = probe.schedule.q_sample(targets, t0, chain.mining_noise_scale * eps)
    step_noise = jax.random.fold_in(_stream(probe, keys[:1], CHAIN_STREAM, j)[0], 1)
    x_neg, _ = langevin.sample_negatives(
        probe.energy_fn, params, inputs, x_init, t0, step_noise, chain.mining_opt_steps,
        probe.schedule, chain.langevin_sigma_multiplier, chain.langevin_grad_clip)
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


def ranking_chunk(probe: Probe, params, inputs, targets, keys, answer):
  """Spearman(E at t = 0, residual) and (E, error) over the candidates, (B,) each, and
  truth_below_answer (B, T): E_t(truth) < E_t(answer), both scaled by sqrt(abar_t)."""
  points, _ = candidates(probe, params, inputs, targets, keys, answer)
  energy = jax.vmap(lambda x: energy_at(probe, params, inputs, x, 0))(points)
  mse, residual = jax.vmap(lambda x: errors(probe, inputs, targets, x))(points)
  below = jnp.stack([energy_at(probe, params, inputs, targets, t)
                     < energy_at(probe, params, inputs, answer, t)
                     for t in range(probe.schedule.num_timesteps)], axis=1)
  return dict(spearman_residual=spearman(energy, residual), spearman_error=spearman(energy, mse),
              truth_below_answer=below)


def scaling_chunk(probe: Probe, params, inputs, targets, keys, answer):
  """The settings' most extra descent steps at t = 0 (one descent) from the sampler's
  ``answer``: the MSE after each, (B, steps + 1)."""
  del keys  # deterministic
  observe = lambda x: errors(probe, inputs, targets, x)[0]  # noqa: E731
  _, stats = descend(probe, params, inputs, answer, 0, probe.settings.scaling_extra_steps[-1],
                     observe)
  return dict(mse=jnp.concatenate([observe(answer)[:, None], stats.observed], 1))


def breadth_chunk(probe: Probe, params, inputs, targets, keys, renoise: float = 0.0):
  """The sampler from the settings' number of start noises (sampler.start_keys; re-noised
  between timesteps with ``renoise``): each answer's MSE, energy at t = 0 and residual,
  (B, trajectories) each."""
  def trajectory(j):
    answer = probe.answer(sample(probe, params, inputs, keys, probe.inner_steps, j, renoise))
    mse, residual = errors(probe, inputs, targets, answer)
    return mse, energy_at(probe, params, inputs, answer, 0), residual
  mse, energy, residual = jax.lax.map(trajectory, jnp.arange(probe.settings.trajectories))
  return dict(mse=mse.T, energy=energy.T, residual=residual.T)


def summarize_breadth(per_level: Sequence[Dict[str, np.ndarray]],
                      mean_answer_mse: np.ndarray) -> Dict[str, list]:
  """Host summary of breadth_chunk's arrays over a set, one entry per re-noise level: the
  MSE of the answer the energy picks (lowest E), of the one the residual picks, of a
  trajectory on average and of the best one; ``energy_beats_mean``: problems whose energy
  pick is better than their trajectories' mean MSE; ``lost``: trajectories whose MSE exceeds
  the mean predictor's on their problem (``mean_answer_mse``, (B,)); ``energy_chose_lost``:
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
def summarize_acceptance(values) -> Dict:
  """Host summary of acceptance_chunk's arrays over a set (summarize_stats, mse, residual)."""
  return dict(instruments.summarize_stats(values["stats"]), mse=float(np.mean(values["mse"])),
              answer_residual=float(np.mean(values["answer_residual"])))


def spread(values) -> Dict[str, float]:
  """{'mean', 'std'} over problems."""
  return dict(mean=float(np.mean(values)), std=float(np.std(values)))


def measure(probe: Probe, params, sets: Dict[str, Tuple[np.ndarray, np.ndarray]],
            keys: np.ndarray, mean_answer: np.ndarray) -> Dict:
  """Every measure on each set {suffix: (inputs (N, inp_dim), targets (N, D))}, problem i
  with ``keys[i]`` (the evaluator's): JSON-ready {'acceptance' + suffix: ..., 'repair' +
  suffix, 'energy_residual_spearman' + suffix, 'energy_error_spearman' + suffix,
  'truth_below_answer' + suffix, 'scaling' + suffix, 'breadth' + suffix};
  ``mean_answer`` (D,): the mean predictor's, repair's cheap wrong start."""
  settings = probe.settings
  cache = {}

  def run(f, arrays, **kw):  # one compiled function per measure, shared by the sets
    name = (f.__name__,) + tuple(sorted(kw.items()))
    if name not in cache:
      cache[name] = jax.jit(lambda params, *a: f(probe, params, *a, **kw))
    return instruments.map_chunks(functools.partial(cache[name], params), arrays,
                                  min(settings.chunk, len(keys)))

  result = {}
  for suffix, (inputs, targets) in sets.items():
    data = (inputs, targets, keys[:len(inputs)])
    acceptance = {}
    for k in sorted(set(settings.acceptance_inner_steps) | {probe.inner_steps}):
      values = run(acceptance_chunk, data, inner_steps=k)
      if k == probe.inner_steps:
        answers = values["answer"]
      acceptance[f"k{k}"] = summarize_acceptance(values)
    repair = run(repair_chunk, data + (np.broadcast_to(mean_answer, targets.shape),))
    ranking = run(ranking_chunk, data + (answers,))
    scaling = run(scaling_chunk, data + (answers,))
    breadth = [run(breadth_chunk, data, renoise=r) for r in settings.breadth_renoise]
    mean_mse = np.mean(np.square(mean_answer - targets.astype(np.float64)), axis=-1)
    extra = np.asarray(settings.scaling_extra_steps)
    steps = list(settings.repair_steps)
    result.update({
        f"acceptance{suffix}": acceptance,
        f"repair{suffix}": dict(
            steps=steps, radii=list(settings.radii),
            **{t: {name: {m: np.mean(v[m], axis=0)[steps].tolist() for m in v}
                   for name, v in per_start.items()} for t, per_start in repair.items()}),
        f"energy_residual_spearman{suffix}": spread(ranking["spearman_residual"]),
        f"energy_error_spearman{suffix}": spread(ranking["spearman_error"]),
        f"truth_below_answer{suffix}": np.mean(ranking["truth_below_answer"], axis=0).tolist(),
        f"scaling{suffix}": dict(
            extra_steps=extra.tolist(),
            total_steps=(extra + probe.schedule.num_timesteps * probe.inner_steps).tolist(),
            mse=np.mean(scaling["mse"], axis=0)[extra].tolist()),
        f"breadth{suffix}": dict(trajectories=settings.trajectories,
                                 renoise=list(settings.breadth_renoise),
                                 **summarize_breadth(breadth, mean_mse))})
  return result


def summary(landscape: Dict) -> Dict[str, float]:
  """A few scalar columns of a landscape.json (e.g. for the ablation's table), per set:
  moved_after_first (mean over t and inner steps >= 1 at the config's count),
  repair_r0.25 (MSE after the last repair step at t = 0 from radius 0.25, relative to
  its start), spearman_residual, truth_below_answer (t = 0), scaling_gain (MSE after
  the most extra steps / at none), breadth_gain (energy-chosen / mean trajectory, start
  noise only), breadth_renoised_gain and breadth_renoised_residual_gain (the energy's and
  the residual's pick at the largest re-noise / the sampler's answer without re-noise),
  breadth_renoised_lost (trajectories worse than the mean predictor, largest re-noise) and
  breadth_renoised_chose_lost (problems whose energy pick is one)."""
  columns = {}
  k = landscape["run"]["inner_steps"]
  for suffix in ("", "_ood"):
    moved = np.asarray(landscape[f"acceptance{suffix}"][f"k{k}"]["moved"])
    repair = landscape[f"repair{suffix}"]["t0"]["r0.25"]["mse"]
    scaling = landscape[f"scaling{suffix}"]["mse"]
    breadth = landscape[f"breadth{suffix}"]
    plain = breadth["renoise"].index(0.0)
    most = int(np.argmax(breadth["renoise"]))
    columns.update({
        f"moved_after_first{suffix}": float(moved[:, 1:].mean()) if moved.shape[1] > 1 else 0.0,
        f"repair_r0.25{suffix}": repair[-1] / repair[0],
        f"spearman_residual{suffix}": landscape[f"energy_residual_spearman{suffix}"]["mean"],
        f"truth_below_answer{suffix}": landscape[f"truth_below_answer{suffix}"][0],
        f"scaling_gain{suffix}": scaling[-1] / scaling[0],
        f"breadth_gain{suffix}": (breadth["mse_energy_chosen"][plain]
                                  / breadth["mse_mean_trajectory"][plain]),
        f"breadth_renoised_gain{suffix}": (breadth["mse_energy_chosen"][most]
                                           / breadth["mse_mean_trajectory"][plain]),
        f"breadth_renoised_residual_gain{suffix}": (breadth["mse_residual_chosen"][most]
                                                    / breadth["mse_mean_trajectory"][plain]),
        f"breadth_renoised_lost{suffix}": breadth["lost"][most],
        f"breadth_renoised_chose_lost{suffix}": breadth["energy_chose_lost"][most]})
  return columns


# The ablation's columns (``summary``'s keys, each per set): key, header, format.
_COLUMNS = (
    ("repair_r0.25", "repair: MSE after descent ÷ start (truth + 0.25 RMS)", ".3g"),
    ("spearman_residual", "Spearman(E, residual)", ".3f"),
    ("truth_below_answer", "P[E(truth) < E(answer)] at t=0", ".3f"),
    ("moved_after_first", "inner proposals that move y after the first", ".3f"),
    ("scaling_gain", "MSE after descent past the schedule ÷ without", ".4f"),
    ("breadth_gain", "MSE of the energy's pick of the trajectories ÷ one trajectory", ".4f"),
    ("breadth_renoised_gain", "the same, re-noised trajectories ÷ the sampler's answer",
     ".4f"),
    ("breadth_renoised_residual_gain", "the same, picked by the residual", ".4f"),
    ("breadth_renoised_lost", "re-noised trajectories worse than the mean predictor", ".4f"),
    ("breadth_renoised_chose_lost", "problems where the energy picks a lost one", ".4f"))


def columns(settings: Dict):
  """The ablation's columns (``summary``'s keys, each per set): (key, header, format)."""
  del settings  # the same for every setting
  return _COLUMNS


def describe(settings: Dict) -> str:
  """The measurement's settings (landscape.json's) in words, for the ablation's report."""
  return (f"{settings['eval_size']} problems per set, {settings['matmul_dtype']} products "
          f"(docs/landscape.md); breadth: {settings['trajectories']} trajectories a problem, "
          f"re-noised at {max(settings['breadth_renoise']):g}")


class NotMeasurable(ValueError):
  """A run whose task the settings' measures do not fit (continuous measures for a task with
  many right answers, or the reverse)."""


def check_task(task, settings=Settings()) -> None:
  """NotMeasurable where ``settings`` measure the other kind of task: these (``Settings``)
  take the target for the one right answer; answer_landscape.Settings, a discrete task's."""
  if task.discrete and not settings.discrete:
    raise NotMeasurable(f"these measures take the target for the one right answer; this run's "
                        f"task ({task.describe()}) has many: answer_landscape's measures")
  if settings.discrete and not task.discrete:
    raise NotMeasurable(f"answer_landscape measures a task with many right answers; this run's "
                        f"is {task.describe()}")


def evaluate_run(workdir: str, settings=Settings(), checkpoint_step: Optional[int] = None) -> Dict:
  """``settings.measure`` (this module's ``measure``, or answer_landscape's for a discrete
  task's settings) on a run's EMA parameters (solve.load) and its Evaluator's sets of
  ``settings.eval_size`` problems, with the run's identity under 'run' and the settings under
  'settings'. Raises solve.SolveError for a bad workdir or checkpoint_step, NotMeasurable
  for settings of the other kind of task."""
  model = solve.load(workdir, checkpoint_step)
  check_task(model.task, settings)
  config = model.config.copy_and_resolve_references()
  config.matmul_dtype = settings.matmul_dtype
  setup = train.build_setup(config)
  evaluator = evaluation.Evaluator(setup, size=settings.eval_size)
  probe = from_setup(setup, settings)
  result = settings.measure(probe, model.params, evaluator)
  result["run"] = dict(
      workdir=os.path.abspath(workdir), strategy=config.mining_strategy, seed=config.seed,
      step=model.step, matmul_dtype=config.matmul_dtype, eval_seed=evaluator.seed,
      inner_steps=probe.inner_steps,
      sampler_output="x0" if probe.return_x0 else "sqrt(abar_0) x0")
  result["settings"] = settings.as_json()
  return result


def holds(saved: Optional[Dict], settings: Settings, step: int, eval_seed: int) -> bool:
  """Whether a landscape.json (``saved``) measured checkpoint ``step`` with these settings on
  the evaluation sets of ``eval_seed``: then it is reused, not measured again."""
  run = (saved or {}).get("run", {})
  return ((saved or {}).get("settings") == settings.as_json() and run.get("step") == step
          and run.get("eval_seed") == eval_seed)


def measure_run(workdir: str, settings=Settings(),
                checkpoint_step: Optional[int] = None) -> Tuple[Dict, Tuple[str, str]]:
  """``evaluate_run`` and ``write`` with the workdir held (workdir_lock: no run or other
  measurement writes there meanwhile). Returns (the result, the paths written)."""
  with workdir_lock.hold(workdir):
    result = evaluate_run(workdir, settings, checkpoint_step)
    return result, write(workdir, result, settings)


def write(workdir: str, result: Dict, settings=Settings()) -> Tuple[str, str]:
  """WORKDIR/landscape.json and landscape.png (``settings.plot``), each through a temporary
  file and a rename."""
  json_path = os.path.join(workdir, "landscape.json")
  metrics_io.write_json_atomic(json_path, result)
  return json_path, settings.plot(result, os.path.join(workdir, "landscape.png"))
