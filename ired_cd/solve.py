"""Solve your own problems with a trained run: its config, EMA parameters and IRED's sampler.

  from ired_cd import solve
  answers = solve.solve("results/ds_inverse/cd_full_cpu", a, inner_steps=(5, 10))  # {5: X, 10: X}

For the inverse task ``a`` holds matrices A, (n, rank, rank) or flattened
(n, rank^2); each answer X ~ A^{-1} has the input's layout. The answers are
the sampler's unscaled x0 at t = 0 (``config.eval_return_x0=True``): its
estimate of the answer itself. The evaluator scores sqrt(abar_0) x0 by default
(abar_0 ~ 0.97, the PyTorch reference's output) so that its numbers compare.

Bad input raises ``SolveError`` naming the field (workdir, input,
checkpoint_step) before anything is loaded, and so do an unreadable
checkpoint_step and non-finite answers; inputs far outside the training
distribution (for inverse: not symmetric positive definite; for any task: a
norm far outside the training inputs') are solved, with one
``OutOfDistributionWarning`` per kind. ``save`` writes answers atomically.
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

from ired_cd import checkpoint, evaluation, parallel, schema, tasks, train
from ired_cd import sampler as sampler_lib

SCALE_MARGIN = 2.0  # warn below (training min norm) / margin and above margin * (training max)
REFERENCE_SIZE = 1000  # training inputs drawn to find that range
SYMMETRY_TOLERANCE = 1e-5  # max |A - A^T| relative to max |A|


class SolveError(ValueError):
  """A bad argument to solve: ``field`` names it (workdir, input, checkpoint_step)."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field = field
    self.message = message


class OutOfDistributionWarning(UserWarning):
  """Problems unlike the training distribution: solved, but the answers may be poor."""


@dataclasses.dataclass(frozen=True)
class Model:
  """A trained run, loaded: its config, task, EMA parameters (replicated on ``mesh``, every
  device of this host), checkpoint step and sampler (sampler.make_sampler with return_x0:
  one compiled sampler for any inner-step count and any number of problems)."""

  config: ml_collections.ConfigDict
  task: tasks.Task
  params: Any
  step: int
  sample: Callable
  mesh: jax.sharding.Mesh


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


def layouts(task: tasks.Task, rank: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """The two shapes of one problem: flat (inp_dim,) and as matrices ((k,) rank, rank)."""
  matrices = task.inp_dim // (rank * rank)
  return (task.inp_dim,), ((rank, rank) if matrices == 1 else (matrices, rank, rank))


def answer_shape(input_shape, task: tasks.Task, rank: int) -> Tuple[int, ...]:
  """The answers' shape for inputs of ``input_shape`` (a layout of check_inputs): flat in,
  (n, out_dim) out; matrices in, (n, rank, rank) out."""
  return tuple(input_shape[:1]) + ((task.out_dim,) if len(input_shape) == 2 else (rank, rank))


def check_inner_steps(inner_steps: Sequence[int]) -> Tuple[int, ...]:
  """``inner_steps`` as a tuple of integers >= 0; SolveError otherwise."""
  steps = tuple(inner_steps)
  if not steps or not all(isinstance(k, (int, np.integer)) and k >= 0 for k in steps):
    raise SolveError("inner_steps", f"a non-empty list of integers >= 0, got {list(steps)}")
  return tuple(int(k) for k in steps)


def check_inputs(inputs, task: tasks.Task, rank: int) -> np.ndarray:
  """``inputs`` in either layout -> float32 (n, inp_dim); SolveError naming what is wrong."""
  inputs = np.asarray(inputs)
  if not (np.issubdtype(inputs.dtype, np.integer) or np.issubdtype(inputs.dtype, np.floating)):
    raise SolveError("input", f"dtype {inputs.dtype}: real numbers expected")
  flat, matrix = layouts(task, rank)
  if inputs.shape[1:] not in (flat, matrix) or inputs.shape[0] < 1:
    hint = (f"; one problem: add a leading axis, shape {(1,) + inputs.shape}"
            if inputs.shape in (flat, matrix) else "")
    raise SolveError("input", f"shape {inputs.shape} does not fit the run's task {task.name} "
                     f"at rank {rank}: expected (n, {', '.join(map(str, matrix))}) or "
                     f"(n, {flat[0]}) with n >= 1{hint}")
  problems = inputs.reshape(inputs.shape[0], -1).astype(np.float32)
  bad = np.flatnonzero(~np.all(np.isfinite(problems), axis=1))
  if bad.size:
    raise SolveError("input", f"{bad.size} of {len(problems)} problems hold non-finite values "
                     f"(first: problem {bad[0]})")
  return problems


def distribution_warnings(task: tasks.Task, rank: int, problems: np.ndarray) -> List[str]:
  """One line per kind of problem unlike the training inputs (an empty list: none).

  problems: (n, inp_dim). Inverse: not symmetric positive definite. Every task:
  a Frobenius norm outside [min / SCALE_MARGIN, max * SCALE_MARGIN] of
  REFERENCE_SIZE training inputs' norms.
  """
  lines = []
  n = len(problems)
  if task.name == "inverse":
    a = problems.astype(np.float64).reshape(n, rank, rank)
    asymmetry = np.max(np.abs(a - np.swapaxes(a, 1, 2)), axis=(1, 2))
    symmetric = asymmetry <= SYMMETRY_TOLERANCE * np.max(np.abs(a), axis=(1, 2))
    sym = 0.5 * (a + np.swapaxes(a, 1, 2))
    spd = symmetric & (np.linalg.eigvalsh(sym)[:, 0] > 0)
    if not spd.all():
      first = np.flatnonzero(~spd)[0]
      lines.append(f"{np.sum(~spd)} of {n} problems are not symmetric positive definite "
                   f"(first: problem {first}); the run was trained on SPD matrices, their "
                   "answers may be poor")
  reference, _ = task.sample_numpy(np.random.RandomState(0), REFERENCE_SIZE, False)
  norms = np.linalg.norm(reference, axis=1)
  low, high = norms.min() / SCALE_MARGIN, norms.max() * SCALE_MARGIN
  scale = np.linalg.norm(problems.astype(np.float64), axis=1)
  outside = (scale < low) | (scale > high)
  if outside.any():
    first = np.flatnonzero(outside)[0]
    lines.append(f"{np.sum(outside)} of {n} problems have a norm outside [{low:.3g}, {high:.3g}] "
                 f"(first: problem {first}, norm {scale[first]:.3g}; training inputs "
                 f"{norms.min():.3g} to {norms.max():.3g}); their answers may be poor")
  return lines


def load(workdir: str, checkpoint_step: Optional[int] = None) -> Model:
  """The run's config and the EMA parameters (only those) of its newest (or the given)
  checkpoint, on every local device."""
  config = read_config(workdir, checkpoint_step)
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
  sample = sampler_lib.make_sampler(setup.energy_fn, setup.schedule, setup.task.out_dim,
                                    return_x0=True)
  return Model(config, setup.task, params, step, sample, mesh)


def content_keys(problems: np.ndarray, seed: int = 0) -> np.ndarray:
  """Each problem's start-noise key from its bytes: (n, inp_dim) float32 -> (n, 2) uint32.

  fold_in(PRNGKey(seed), a 32-bit hash of the row), so a problem gets the same
  answer alone, in any batch, at any row.
  """
  hashes = np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=4).digest(),
                                    "little") for row in problems], np.uint32)
  return evaluation.fold_in_keys(jax.random.PRNGKey(seed), hashes)


def answer(model: Model, problems: np.ndarray, inner_steps: int, seed: int = 0) -> np.ndarray:
  """The sampler's unscaled x0 for ``problems`` (n, inp_dim) -> (n, out_dim) float32.

  ``inner_steps`` energy-descent steps per timestep; each problem's start noise
  comes from ``seed`` and its content (``content_keys``: the same for every
  ``inner_steps``). Problems go in chunks of ``eval_chunk`` rows, fewer padded:
  one compiled sampler serves every n.
  """
  chunk = evaluation.chunk_size(model.config.eval_chunk, model.mesh)
  return evaluation.predict(model.sample, model.params, problems, content_keys(problems, seed),
                            inner_steps, chunk, model.mesh)


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
  """Writes ``answers`` to the .npy file ``path`` atomically: a temporary file in the same
  directory, renamed over ``path`` when complete (a crash leaves the old file or none)."""
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb") as f:
      np.save(f, answers)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def score(task: tasks.Task, problems: np.ndarray, answers: np.ndarray) -> Dict[str, float]:
  """{'residual_mean', 'residual_median'} where the task has an oracle residual (inverse:
  ||A X - I||_F), {'mse'} against ``task.exact`` where it has one (inverse: numpy.linalg.inv)."""
  result = {}
  if task.residual is not None:
    residual = np.asarray(task.residual(problems, answers), np.float64)
    result.update(residual_mean=float(np.mean(residual)),
                  residual_median=float(np.median(residual)))
  if task.exact is not None:
    result["mse"] = float(np.mean(np.square(answers.astype(np.float64) - task.exact(problems))))
  return result


def solve(workdir: str, inputs, inner_steps: Sequence[int] = (5,),
          checkpoint_step: Optional[int] = None, seed: int = 0) -> Dict[int, np.ndarray]:
  """{inner_steps: answers in the layout of ``inputs``} from the run in ``workdir``.

  inputs: (n, inp_dim) or (n, rank, rank) (addition: (n, 2, rank, rank)).
  Answers: (n, rank^2) or (n, rank, rank), float32, the sampler's unscaled x0.
  """
  inner_steps = check_inner_steps(inner_steps)
  config = read_config(workdir, checkpoint_step)
  task = tasks.get_task(config.task, config.rank)
  problems = check_inputs(inputs, task, config.rank)
  for line in distribution_warnings(task, config.rank, problems):
    warnings.warn(line, OutOfDistributionWarning, stacklevel=2)
  model = load(workdir, checkpoint_step)
  shape = answer_shape(np.shape(inputs), task, config.rank)
  answers = {k: answer(model, problems, k, seed).reshape(shape) for k in inner_steps}
  check_answers(answers)
  return answers
