"""Solve your own problems with a trained run: its config, EMA parameters and IRED's sampler.

  from ired_cd import solve
  answers = solve.solve("results/ds_inverse/cd_full_cpu", a, inner_steps=(5, 10))  # {5: X, 10: X}
  answers = solve.solve("results/sat_cpu/cd_full/seed0", formulas, particles=64)

With ``particles`` = K > 1 each problem gets K re-noised trajectories (the evaluation's
particles) and one of them is answered (``PICKS``): by default the one the task's oracle
likes best (fewest violations, or the least residual; ties to the lower energy), which needs
no target; or the energy's (the lowest E at t = 0).

For the inverse task ``a`` holds matrices A, (n, rank, rank) or flattened
(n, rank^2); each answer X ~ A^{-1} has the input's layout. The answers are
the sampler's unscaled x0 at t = 0 (``config.eval_return_x0=True``): its
estimate of the answer itself. The evaluator scores sqrt(abar_0) x0 by default
(abar_0 ~ 0.97, the PyTorch reference's output) so that its numbers compare.
A discrete task's problems come from instance files (``instance_paths``,
``read_instances``: DIMACS CNF formulas, DIMACS graphs) and its answers go back
as solution files (``write_solutions``).

Bad input raises ``SolveError`` naming the field (workdir, input,
checkpoint_step) before anything is loaded, and so do an unreadable
checkpoint_step and non-finite answers; inputs far outside the training
distribution (``task.distribution_warnings``: for inverse not symmetric positive
definite; for a continuous task a norm far outside the training inputs') are
solved, with one ``OutOfDistributionWarning`` per kind. Answers are written
atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from ired_cd import checkpoint, dimacs, evaluation, metrics_io, parallel, schema, tasks, train



PICKS = ("oracle", "energy")


class SolveError(ValueError):
  """A bad argument to solve: ``field`` names it (workdir, input, checkpoint_step, ...)."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field = field
    self.message = message


class OutOfDistributionWarning(UserWarning):
  """Problems unlike the training distribution: solved, but the answers may be poor."""


@dataclasses.dataclass(frozen=True)
class Model:
  """A trained run, loaded: its config, setup, task, EMA parameters (replicated on ``mesh``,
  every device of this host), checkpoint step and an Evaluator answering x0 unscaled, whose
  programs it runs: ``sample`` (one compiled sampler for any inner-step count and any number
  of problems) and ``particle_program`` (one per particle count)."""

  config: ml_collections.ConfigDict
  setup: train.Setup
  task: tasks.Task
  params: Any
  step: int
  mesh: jax.sharding.Mesh
  evaluator: evaluation.Evaluator

  @property
  def sample(self) -> Callable:
    return self.evaluator.sample


def read_config(workdir: str, checkpoint_step: Optional[int] = None) -> ml_collections.ConfigDict:
  """The run's config; SolveError unless ``workdir`` has a config.json and the checkpoint."""
  if not os.path.isdir(workdir):
    raise SolveError("workdir", f"{workdir} is not a directory")
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise SolveError("workdir", f"no config.json in {workdir}: not a run of experiments.run")
  try:
    config = schema.load_config(workdir)
  except (OSError, ValueError, KeyError) as err:
    raise SolveError("workdir", f"config.json in {workdir} is unreadable "
                     f"({type(err).__name__}: {err})") from err
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise SolveError("workdir", f"no checkpoints in {workdir}: train it first")
  store = checkpoint.CheckpointStore(directory, config.keep_checkpoints)
  steps = store.steps()
  store.close()
  if not steps:
    raise SolveError("workdir", f"no checkpoints in {directory}: train it first")
  if checkpoint_step is not None and checkpoint_step not in steps:
    raise SolveError("checkpoint_step", f"no checkpoint at step {checkpoint_step} in "
                     f"{directory}; there are {steps}")
  return config


def layouts(task: tasks.Task) -> Tuple[Tuple[int, ...], ...]:
  """The shapes one problem may take in an array: flat (inp_dim,), and for a matrix task
  as matrices ((k,) rank, rank)."""
  if not isinstance(task, tasks.base.MatrixTask):
    return ((task.inp_dim,),)
  rank, matrices = task.rank, task.input_matrices
  return (task.inp_dim,), ((rank, rank) if matrices == 1 else (matrices, rank, rank))


def answer_shape(input_shape, task: tasks.Task) -> Tuple[int, ...]:
  """The answers' shape for inputs of ``input_shape`` (a layout of check_inputs): flat in,
  (n, out_dim) out; matrices in, (n, rank, rank) out."""
  if len(input_shape) == 2:
    return tuple(input_shape[:1]) + (task.out_dim,)
  return tuple(input_shape[:1]) + (task.rank, task.rank)


def check_inner_steps(inner_steps: Sequence[int]) -> Tuple[int, ...]:
  """``inner_steps`` as a tuple of integers >= 0; SolveError otherwise."""
  steps = tuple(inner_steps)
  if not steps or not all(isinstance(k, (int, np.integer)) and k >= 0 for k in steps):
    raise SolveError("inner_steps", f"a non-empty list of integers >= 0, got {list(steps)}")
  return tuple(int(k) for k in steps)


def check_particles(particles: int, pick: str) -> None:
  """SolveError naming ``particles`` (an integer >= 1) or ``pick`` (one of PICKS)."""
  if not isinstance(particles, (int, np.integer)) or particles < 1:
    raise SolveError("particles", f"an integer >= 1, got {particles!r}")
  if pick not in PICKS:
    raise SolveError("pick", f"one of {', '.join(PICKS)}, got {pick!r}")


def check_inputs(inputs, task: tasks.Task) -> np.ndarray:
  """``inputs`` in one of ``layouts(task)`` -> float32 (n, inp_dim); SolveError naming what
  is wrong."""
  inputs = np.asarray(inputs)
  if not (np.issubdtype(inputs.dtype, np.integer) or np.issubdtype(inputs.dtype, np.floating)):
    raise SolveError("input", f"dtype {inputs.dtype}: real numbers expected")
  shapes = layouts(task)
  if inputs.shape[1:] not in shapes or inputs.shape[0] < 1:
    hint = (f"; one problem: add a leading axis, shape {(1,) + inputs.shape}"
            if inputs.shape in shapes else "")
    expected = " or ".join(f"(n, {', '.join(map(str, shape))})" for shape in shapes[::-1])
    raise SolveError("input", f"shape {inputs.shape} does not fit the run's task "
                     f"{task.describe()}: expected {expected} with n >= 1{hint}")
  problems = inputs.reshape(inputs.shape[0], -1).astype(np.float32)
  bad = np.flatnonzero(~np.all(np.isfinite(problems), axis=1))
  if bad.size:
    raise SolveError("input", f"{bad.size} of {len(problems)} problems hold non-finite values "
                     f"(first: problem {bad[0]})")
  return problems


def instance_paths(task: tasks.Task, path: str) -> List[str]:
  """The instance files at ``path`` (one file, or the files of a directory whose suffix is
  one of the task's), sorted; SolveError where there are none."""
  if os.path.isdir(path):
    found = sorted(os.path.join(path, name) for name in os.listdir(path)
                   if name.endswith(task.file_suffixes)
                   and os.path.isfile(os.path.join(path, name)))
    if not found:
      raise SolveError("input", f"no {' or '.join(task.file_suffixes)} files in {path}")
    return found
  if not os.path.isfile(path):
    raise SolveError("input", f"no file or directory {path}")
  return [path]


def _reading(read, path: str):
  """``read(path)``; SolveError naming the file (and the line) where it cannot be read or the
  model cannot take it."""
  try:
    return read(path)
  except (dimacs.DimacsError, tasks.InstanceError) as err:
    raise SolveError("input", str(err)) from err
  except OSError as err:
    raise SolveError("input", f"cannot read {path} ({err.strerror})") from err


def read_instances(task: tasks.Task, paths: Sequence[str]) -> Tuple[np.ndarray, List[int]]:
  """(problems (n, inp_dim) float32, each instance's size: variables or nodes) of the files;
  SolveError naming the file (and the line) of the first that cannot be read or that the
  model cannot take."""
  rows, sizes = zip(*(_reading(task.read_instance, path) for path in paths))
  return np.stack(rows).astype(np.float32), list(sizes)


def fit_config(config: ml_collections.ConfigDict,
               paths: Sequence[str]) -> ml_collections.ConfigDict:
  """The run's config, for an energy whose parameters do not depend on the instance's size
  (a composed energy_model: 'clauses', 'edges'), grown to hold every instance of ``paths``
  (task.fitting: the parameters load unchanged); the config itself where it holds them, or
  for IRED's MLP."""
  if config.energy_model == "mlp":
    return config
  task = tasks.from_config(config)
  fields = task.fitting([_reading(task.instance_size, path) for path in paths])
  if all(config[name] == value for name, value in fields.items()):
    return config
  grown = config.copy_and_resolve_references()
  grown.update(fields)
  return grown


def load(workdir: str, checkpoint_step: Optional[int] = None,
         config: Optional[ml_collections.ConfigDict] = None) -> Model:
  """The run's config (or ``config``, e.g. ``fit_config``'s) and the EMA parameters (only those)
  of its newest (or the given) checkpoint, on every local device."""
  config = config or read_config(workdir, checkpoint_step)
  setup = train.build_setup(config)
  mesh = parallel.make_mesh(devices=jax.local_devices())
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  try:
    params, step = store.restore_params(train.abstract_state(setup, mesh).ema_params,
                                        step=checkpoint_step)
  except checkpoint.UnreadableCheckpoint as err:
    raise SolveError("checkpoint_step", f"the {err}; choose another of {store.steps()}") from err
  finally:
    store.close()
  if params is None:
    raise SolveError("workdir", f"no readable checkpoint in {store.directory}")
  return Model(config, setup, setup.task, params, step, mesh,
               evaluation.Evaluator(setup, mesh=mesh, return_x0=True))


def content_keys(problems: np.ndarray, seed: int = 0) -> np.ndarray:
  """Each problem's start-noise key from its bytes: (n, inp_dim) float32 -> (n, 2) uint32.

  fold_in(PRNGKey(seed), a 32-bit hash of the row), so a problem gets the same
  answer alone, in any batch, at any row.
  """
  hashes = np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=4).digest(),
                                    "little") for row in problems], np.uint32)
  return evaluation.fold_in_keys(jax.random.PRNGKey(seed), hashes)


def answer(model: Model, problems: np.ndarray, inner_steps: int, seed: int = 0,
           particles: int = 1, pick: str = "oracle") -> np.ndarray:
  """The sampler's unscaled x0 for ``problems`` (n, inp_dim) -> (n, out_dim) float32.

  ``inner_steps`` energy-descent steps per timestep; each problem's start noise
  comes from ``seed`` and its content (``content_keys``: the same for every
  ``inner_steps``). Problems go in chunks of ``eval_chunk`` rows, fewer padded:
  one compiled sampler serves every n. With ``particles`` > 1: the ``pick`` of
  ``particle_answers`` (``choose``).
  """
  if particles > 1:
    outputs, energies = particle_answers(model, problems, inner_steps, particles, seed)
    return choose(model.task, problems, outputs, energies, pick)
  chunk = evaluation.chunk_size(model.config.eval_chunk, model.mesh)
  return evaluation.predict(model.sample, model.params, problems, content_keys(problems, seed),
                            inner_steps, chunk, model.mesh)


def particle_answers(model: Model, problems: np.ndarray, inner_steps: int, particles: int,
                     seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """``particles`` trajectories per problem, the evaluation's particle program
  (``Evaluator.particle_program``: re-noised, about eval_chunk rows a call) answering the
  unscaled x0, from the problem's ``content_keys``: (n, K, out_dim) and each one's energy at
  t = 0 (n, K)."""
  sample, chunk = model.evaluator.particle_program(particles, evaluation.Particles.renoise)
  return evaluation.predict(sample, model.params, problems, content_keys(problems, seed),
                            inner_steps, chunk, model.mesh)


def errors(task: tasks.Task, problems: np.ndarray, answers: np.ndarray) -> np.ndarray:
  """The task's oracle on each answer, with no target: a discrete task's violations of the
  decoded answer, a continuous one's residual (e.g. ||A X - I||_F). (n, inp_dim), (n,
  out_dim) -> (n,)."""
  if task.discrete:
    return np.asarray(task.verify(problems, task.decode(answers)))
  return np.asarray(task.residual(problems, answers), np.float64)


def choose(task: tasks.Task, problems: np.ndarray, outputs: np.ndarray, energies: np.ndarray,
           pick: str) -> np.ndarray:
  """Each problem's answer among its particles: outputs (n, K, D), energies (n, K) -> (n, D).
  'energy': the lowest E; 'oracle': the fewest violations (least residual), ties to the
  lowest E."""
  n, k, dim = outputs.shape
  if pick == "energy":
    chosen = np.argmin(energies, axis=1)
  else:
    error = errors(task, np.repeat(problems, k, axis=0), outputs.reshape(n * k, dim))
    chosen = np.lexsort((energies, error.reshape(n, k)), axis=1)[:, 0]
  return outputs[np.arange(n), chosen]


def check_answers(answers: Dict[int, np.ndarray]) -> None:
  """SolveError naming how many problems got a non-finite answer (answers: {inner_steps:
  (n, ...)}), e.g. for entries far beyond the training inputs' scale."""
  for k, x in answers.items():
    bad = np.flatnonzero(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1))
    if bad.size:
      raise SolveError("input", f"{bad.size} of {len(x)} problems got non-finite answers with "
                       f"inner_steps={k} (first: problem {bad[0]}); are their entries far "
                       "outside the training inputs' scale?")


def save(path: str, answers: np.ndarray) -> None:
  """Writes ``answers`` to the .npy file ``path`` atomically (metrics_io.write_atomic: a crash
  leaves the old file or none)."""
  metrics_io.write_atomic(path, lambda f: np.save(f, answers))


def write_solutions(task: tasks.Task, paths: Sequence[str], answers: np.ndarray,
                    sizes: Sequence[int], violations: np.ndarray) -> None:
  """Each answer (out_dim,) as its instance's solution file (``task.format_answer``) at the
  matching path, each written atomically."""
  for path, answer_row, size, count in zip(paths, answers, sizes, violations):
    text = task.format_answer(answer_row, size, int(count))
    metrics_io.write_atomic(path, lambda f, text=text: f.write(text), binary=False)


def score(task: tasks.Task, problems: np.ndarray, answers: np.ndarray) -> Dict[str, Any]:
  """What the printout says of the answers: for a continuous task {'residual_mean',
  'residual_median'} (its oracle, e.g. ||A X - I||_F) and {'mse'} against ``task.exact``
  where it has one (inverse: numpy.linalg.inv); for a discrete one {'violations'} per
  problem and {'solved'}, the share with none."""
  if task.discrete:
    violations = errors(task, problems, answers)
    return dict(violations=violations, solved=float(np.mean(violations == 0)))
  residual = errors(task, problems, answers)
  result = dict(residual_mean=float(np.mean(residual)),
                residual_median=float(np.median(residual)))
  exact = task.exact(problems)
  if exact is not None:
    result["mse"] = float(np.mean(np.square(answers.astype(np.float64) - exact)))
  return result


def solve(workdir: str, inputs, inner_steps: Sequence[int] = (5,),
          checkpoint_step: Optional[int] = None, seed: int = 0, particles: int = 1,
          pick: str = "oracle") -> Dict[int, np.ndarray]:
  """{inner_steps: answers in the layout of ``inputs``} from the run in ``workdir``, with
  ``particles`` trajectories per problem and their ``pick`` (``answer``).

  inputs: (n, inp_dim), or for a matrix task (n, rank, rank) (addition: (n, 2, rank, rank)).
  Answers: (n, out_dim) or (n, rank, rank), float32, the sampler's unscaled x0 (a discrete
  task's decode it: ``task.decode``).
  """
  inner_steps = check_inner_steps(inner_steps)
  check_particles(particles, pick)
  task = tasks.from_config(read_config(workdir, checkpoint_step))
  problems = check_inputs(inputs, task)
  for line in task.distribution_warnings(problems):
    warnings.warn(line, OutOfDistributionWarning, stacklevel=2)
  model = load(workdir, checkpoint_step)
  shape = answer_shape(np.shape(inputs), task)
  answers = {k: answer(model, problems, k, seed, particles, pick).reshape(shape)
             for k in inner_steps}
  check_answers(answers)
  return answers
