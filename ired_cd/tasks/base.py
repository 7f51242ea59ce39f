"""What every task declares, and what the continuous and the discrete tasks share.

A task is a problem family: problems ``inputs`` (B, inp_dim) and answers y
(B, out_dim), the continuous vectors IRED diffuses. It declares

  sample(key, batch_size, ood, data)  a training batch on device, inside the jitted step
                                      (``data``: the arrays ``build_data`` made, or None)
  eval_set(n, seed, ood)              a fixed evaluation set on the host, seeded apart from
                                      the training seed
  residual(inputs, y)                 the oracle (B,): scores an answer without the target;
                                      the CD filter's test against false negatives
  score(inputs, targets, answers)     per-problem values of its ``metrics`` (host)
  baseline_scores(sets, seed)         its trivial predictors' metrics, named
                                      '<metric><suffix>_<baseline>', e.g. 'mse_mean_predictor'

Continuous tasks (``ContinuousTask``) score the MSE against the target and the
residual, beside the mean predictor. Discrete tasks (``DiscreteTask``) decode y to
an assignment and score it with a verifier: ``solved`` (no violation) and
``violations``, beside a random assignment and a classical method.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

SPLITS = {"": False, "_ood": True}  # metric suffix -> the harder set


@dataclasses.dataclass(frozen=True)
class Metric:
  """A per-problem value a task reports, as ``eval/<name>`` and ``eval/<name>_ood``."""

  name: str
  label: str  # how tables and figures name it
  higher_is_better: bool
  spec: str  # its format in tables


MSE = Metric("mse", "MSE", False, "#.4g")
SOLVED = Metric("solved", "solved", True, ".3f")
VIOLATIONS = Metric("violations", "violations", False, ".3g")


class InstanceError(ValueError):
  """A problem file the run's model cannot take: malformed (``line`` names where) or beyond
  the model's size."""

  def __init__(self, path: str, message: str, line: Optional[int] = None):
    where = f"{path}, line {line}" if line is not None else path
    super().__init__(f"{where}: {message}")
    self.path, self.line = path, line


@dataclasses.dataclass(frozen=True)
class Task:
  """The interface (see the module docstring); subclasses are frozen dataclasses whose fields
  are the task's config fields (``FIELDS`` of its module)."""

  # Class constants (not fields): the task's name, its metrics (the first is the headline),
  # its trivial predictors' names, the CD filter's fixed cut on the residual (negatives
  # below it are dropped as right answers; None: the batch quantile,
  # config.residual_filter_quantile), and the instance files experiments.solve reads
  # (suffixes; none: arrays in a .npy file).
  name = ""
  metrics = ()
  baselines = ()
  filter_threshold = None
  file_suffixes = ()

  @property
  def inp_dim(self) -> int:
    raise NotImplementedError

  @property
  def out_dim(self) -> int:
    raise NotImplementedError

  @property
  def discrete(self) -> bool:
    return False

  def describe(self) -> str:
    """A few words: what the task is, at which size."""
    return self.name

  def sample(self, key, batch_size: int, ood: bool = False, data=None):
    """(inputs (B, inp_dim), targets (B, out_dim)) float32, on device (jittable)."""
    raise NotImplementedError

  def eval_set(self, n: int, seed: int, ood: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs (n, inp_dim), targets (n, out_dim)) float32 numpy arrays, fixed by ``seed``."""
    raise NotImplementedError

  def residual(self, inputs, y):
    """The oracle: (B,) float32, 0 for a right answer."""
    raise NotImplementedError

  def score(self, inputs, targets, answers) -> Dict[str, np.ndarray]:
    """{metric name: (n,) per-problem values} of the answers (host arrays)."""
    raise NotImplementedError

  def baseline_scores(self, sets, seed: int) -> Dict[str, float]:
    """The trivial predictors' metrics on ``sets`` ({suffix: (inputs, targets)})."""
    raise NotImplementedError

  def build_data(self, seed: int, ood: bool = False, cache_dir: Optional[str] = None):
    """The training data ``sample`` draws from (a pytree of numpy arrays), or None where
    batches are generated on the device."""
    del seed, ood, cache_dir
    return None

  def data_shapes(self):
    """``build_data``'s shapes and dtypes (jax.ShapeDtypeStructs), without building it."""
    return None

  def distribution_warnings(self, problems: np.ndarray) -> List[str]:
    """One line per kind of problem unlike the training ones (experiments.solve)."""
    del problems
    return []


def means(per_problem: Dict[str, np.ndarray]) -> Dict[str, float]:
  """{name: mean over problems}."""
  return {k: float(np.mean(v)) for k, v in per_problem.items()}


# ----------------------------------------------------------------- continuous tasks
@dataclasses.dataclass(frozen=True)
class ContinuousTask(Task):
  """A task whose answer is the target itself: MSE and residual, beside the mean predictor
  (always answering the mean target). Subclasses give ``sample_numpy``, the float64 host
  generator the evaluation sets come from (numpy's legacy RandomState, as the PyTorch
  reference draws them, so the evaluation problems are the reference's)."""

  metrics = (MSE,)
  baselines = ("mean_predictor",)
  MEAN_SAMPLES = 100_000  # fresh in-distribution targets the mean predictor averages
  residual_label, exact_label = "residual", "the exact answer"  # how solve's printout names them

  def sample_numpy(self, rng: np.random.RandomState, n: int, ood: bool = False):
    """float64 (inputs (n, inp_dim), targets (n, out_dim))."""
    raise NotImplementedError

  def exact(self, inputs) -> Optional[np.ndarray]:
    """The exact answers (float64) where they can be computed from the inputs, else None."""
    del inputs
    return None

  def eval_set(self, n, seed, ood):
    """In-distribution from RandomState(seed), harder from RandomState(seed + 1)."""
    inputs, targets = self.sample_numpy(np.random.RandomState(seed + int(ood)), n, ood)
    return inputs.astype(np.float32), targets.astype(np.float32)

  def score(self, inputs, targets, answers):
    error = np.square(np.asarray(answers, np.float64) - targets)
    return dict(mse=np.mean(error, axis=-1),
                residual=np.asarray(_jit_residual(self)(inputs, answers)))

  def mean_target(self, seed: int) -> np.ndarray:
    """The mean of MEAN_SAMPLES fresh in-distribution targets (seed + 7, as the reference),
    (out_dim,) float64: the mean predictor's answer."""
    return _mean_target(self, seed)

  def predictors(self, inputs, seed: int) -> Dict[str, np.ndarray]:
    """{baseline: its answers (n, out_dim)} for ``inputs``."""
    return dict(mean_predictor=np.broadcast_to(self.mean_target(seed),
                                               (len(inputs), self.out_dim)))

  def baseline_scores(self, sets, seed):
    scores = {}
    for suffix, (inputs, targets) in sets.items():
      for name, answers in self.predictors(inputs, seed).items():
        error = np.square(targets.astype(np.float64) - answers)
        scores[f"mse{suffix}_{name}"] = float(np.mean(error))
    return scores

  def distribution_warnings(self, problems):
    """Problems whose Frobenius norm lies outside [min / SCALE_MARGIN, max * SCALE_MARGIN]
    of REFERENCE_SIZE training inputs' norms."""
    reference, _ = self.sample_numpy(np.random.RandomState(0), REFERENCE_SIZE, False)
    norms = np.linalg.norm(reference, axis=1)
    low, high = norms.min() / SCALE_MARGIN, norms.max() * SCALE_MARGIN
    scale = np.linalg.norm(problems.astype(np.float64), axis=1)
    outside = (scale < low) | (scale > high)
    if not outside.any():
      return []
    first = np.flatnonzero(outside)[0]
    return [f"{np.sum(outside)} of {len(problems)} problems have a norm outside "
            f"[{low:.3g}, {high:.3g}] (first: problem {first}, norm {scale[first]:.3g}; training "
            f"inputs {norms.min():.3g} to {norms.max():.3g}); their answers may be poor"]


@dataclasses.dataclass(frozen=True)
class MatrixTask(ContinuousTask):
  """A continuous task on rank x rank matrices: ``input_matrices`` of them in, one out."""

  rank: int = 20
  input_matrices = 1

  @property
  def inp_dim(self) -> int:
    return self.input_matrices * self.rank * self.rank

  @property
  def out_dim(self) -> int:
    return self.rank * self.rank

  def describe(self) -> str:
    return f"{self.name} {self.rank}x{self.rank}"


SCALE_MARGIN = 2.0  # distribution_warnings: how far outside the training norms a problem may lie
REFERENCE_SIZE = 1000  # training inputs drawn to find those norms


@functools.lru_cache(maxsize=None)
def _mean_target(task: ContinuousTask, seed: int) -> np.ndarray:
  _, targets = task.sample_numpy(np.random.RandomState(seed + 7), task.MEAN_SAMPLES, False)
  return targets.mean(axis=0)


@functools.lru_cache(maxsize=None)
def _jit_residual(task: Task):
  return jax.jit(task.residual)


# ----------------------------------------------------------------- discrete tasks
@dataclasses.dataclass(frozen=True)
class DiscreteTask(Task):
  """A task with many right answers, each a discrete assignment: y decodes to one
  (``decode``), and a verifier counts what it violates (``violations``). The residual is
  that count, so the CD filter drops exactly the negatives that are right answers
  (``filter_threshold`` 0.5: fewer than one violation). Baselines: ``baselines`` =
  ('random', the name of the subclass's ``classical`` method)."""

  metrics = (SOLVED, VIOLATIONS)
  filter_threshold = 0.5

  @property
  def discrete(self) -> bool:
    return True

  def decode(self, y):
    """Answers y (B, out_dim) -> assignments (B, ...) int32 (numpy or jnp, as given)."""
    raise NotImplementedError

  def violations(self, inputs, assignment):
    """(B,) int32: the constraints of each problem its assignment violates (jnp)."""
    raise NotImplementedError

  def random_assignment(self, inputs, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random assignment per problem (the trivial baseline)."""
    raise NotImplementedError

  def classical(self, inputs, rng: np.random.Generator) -> np.ndarray:
    """The assignments of a classical method (``baselines[1]``), for scale."""
    raise NotImplementedError

  def encode(self, assignment) -> np.ndarray:
    """Assignments -> answers y in the diffused space (targets), float32."""
    raise NotImplementedError

  @property
  def values(self) -> Tuple[int, ...]:
    """The values one position of an assignment (B, P) takes, sorted."""
    raise NotImplementedError

  def cnf(self, problem) -> Tuple[List[List[int]], int]:
    """(clauses as DIMACS literals, number of variables) whose models are the right answers
    of one problem (inp_dim,), one model per answer (``canonical`` class)."""
    raise NotImplementedError

  def from_model(self, model) -> np.ndarray:
    """A model of ``cnf`` (signed literals, every variable) -> its assignment (P,)."""
    raise NotImplementedError

  def canonical(self, assignment) -> np.ndarray:
    """One representative of each class of equivalent assignments (B, ...) (host): two
    assignments are the same answer exactly when their canonical forms are equal."""
    return np.asarray(assignment)

  def neighbours(self, assignment) -> np.ndarray:
    """(B, P) -> (B, P (V - 1), P): every assignment one change away (one position given
    another of the V ``values``), position-major."""
    assignment = np.asarray(assignment)
    values = np.asarray(self.values)
    batch, size = assignment.shape
    index = np.searchsorted(values, assignment)
    others = values[(index[:, :, None] + np.arange(1, len(values))) % len(values)]  # (B, P, V-1)
    out = np.repeat(assignment[:, None, None, :], len(values) - 1, axis=2)
    out = np.repeat(out, size, axis=1)  # (B, P, V-1, P)
    for position in range(size):
      out[:, position, :, position] = others[:, position]
    return out.reshape(batch, -1, size)

  def changed(self, assignment, count: int, rng: np.random.Generator) -> np.ndarray:
    """(B, P) -> (B, P): ``count`` distinct positions per row, each given another of the
    ``values`` at random."""
    assignment = np.asarray(assignment)
    values = np.asarray(self.values)
    rows = np.arange(len(assignment))[:, None]
    positions = np.argsort(rng.random(assignment.shape), axis=1)[:, :count]
    shifts = rng.integers(1, len(values), positions.shape)
    index = np.searchsorted(values, assignment[rows, positions])
    out = assignment.copy()
    out[rows, positions] = values[(index + shifts) % len(values)]
    return out

  def valid_answers(self, inputs, keep: int, rng: np.random.Generator, cap: int):
    """Right answers of each problem, enumerated by a SAT solver on ``cnf`` (the first
    ``cap`` models): (answers (n, keep, P), rows past a problem's count repeating its first;
    counts (n,) kept; totals (n,) enumerated, at most ``cap``), ``keep`` drawn uniformly
    from those enumerated."""
    answers, counts, totals = [], [], []
    for problem in np.asarray(inputs):
      clauses, variables = self.cnf(problem)
      total, models = enumerate_models(clauses, variables, keep, rng, cap)
      kept = np.stack([self.from_model(m) for m in models]) if total else None
      if kept is None:
        raise ValueError("a problem without a right answer")
      answers.append(kept[np.arange(keep) % len(kept)])
      counts.append(len(kept))
      totals.append(total)
    return np.stack(answers), np.asarray(counts), np.asarray(totals)

  def residual(self, inputs, y):
    return self.violations(inputs, self.decode(y)).astype(jnp.float32)

  def verify(self, inputs, assignment) -> np.ndarray:
    """``violations`` on host arrays, (n,) int64."""
    return np.asarray(_jit_violations(self)(inputs, assignment)).astype(np.int64)

  def score(self, inputs, targets, answers):
    del targets  # any right answer counts
    violations = self.verify(inputs, self.decode(np.asarray(answers)))
    return dict(solved=(violations == 0).astype(np.float64), violations=violations)

  def baseline_scores(self, sets, seed):
    scores = {}
    for suffix, (inputs, _) in sets.items():
      rng = np.random.default_rng([BASELINE_TAG, seed, int(suffix == "_ood")])
      picks = (self.random_assignment(inputs, rng), self.classical(inputs, rng))
      for name, assignment in zip(self.baselines, picks):
        violations = self.verify(inputs, assignment)
        scores[f"solved{suffix}_{name}"] = float(np.mean(violations == 0))
        scores[f"violations{suffix}_{name}"] = float(np.mean(violations))
    return scores


  def random_particle_scores(self, sets, counts, seed):
    """The particles' trivial baseline: of K uniformly random assignments per problem the
    best (the oracle's pick among random particles), for each K of ``counts``:
    {'solved{suffix}_p{K}_random', 'violations{suffix}_p{K}_random'}."""
    scores = {}
    for suffix, (inputs, _) in sets.items():
      for k in counts:
        rng = np.random.default_rng([BASELINE_TAG, seed, int(suffix == "_ood"), k])
        rows = np.repeat(inputs, k, axis=0)
        fewest = self.verify(rows, self.random_assignment(rows, rng)).reshape(-1, k).min(axis=1)
        scores[f"solved{suffix}_p{k}_random"] = float(np.mean(fewest == 0))
        scores[f"violations{suffix}_p{k}_random"] = float(np.mean(fewest))
    return scores


def enumerate_models(clauses, variables: int, keep: int, rng: np.random.Generator, cap: int):
  """(number of models enumerated (at most ``cap``), up to ``keep`` of them drawn uniformly
  without replacement (reservoir sampling), each a list of ``variables`` signed literals) of
  a CNF (lists of DIMACS literals), by a SAT solver (minisat 2.2)."""
  from pysat.solvers import Solver  # noqa: PLC0415 - the solver is needed on the host only
  kept, count = [], 0
  # The tautology names the last variable, so that every variable is in the models.
  with Solver(name="minisat22", bootstrap_with=list(clauses) + [[variables, -variables]]) as s:
    for model in s.enum_models():
      count += 1
      if len(kept) < keep:
        kept.append(model)
      else:
        slot = rng.integers(count)
        if slot < keep:
          kept[slot] = model
      if count >= cap:
        break
  return count, kept


BASELINE_TAG = 7  # the baselines' random stream: default_rng([BASELINE_TAG, eval seed, ood])


@functools.lru_cache(maxsize=None)
def _jit_violations(task: DiscreteTask):
  return jax.jit(task.violations)


def data_shapes(data) -> Any:
  """ShapeDtypeStructs of a pytree of arrays."""
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data)
