"""Random 3-SAT as SATLIB's uniform instances are made: n variables, clauses of 3 distinct
variables with random signs, satisfiable instances only (kept by a SAT solver).

Training and in-distribution instances have ``clauses`` = (lo, hi) clauses (drawn
uniformly), fewer than the harder set's ``clauses_ood`` (91 at n = 20: SATLIB uf20-91's
distribution), so they have more solutions. The training target of an instance is one
of its satisfying assignments drawn uniformly from all of them: the solver enumerates
them when the dataset is built (``solutions`` kept per instance, a uniform sample of
the rest), and the train step draws one with its key. So the task is many-answered by
construction.

Encoding. A formula is a ``max_clauses`` x n matrix in {-1, 0, +1} (row: a clause; +1:
the variable appears, -1: negated), rows in a canonical order (each formula has one
encoding, whatever order its file lists the clauses in), zero rows after the last
clause. The MLP reads it flat: every entry has one meaning (variable j in the clause of
rank i), and smaller formulas are the same matrix with fewer rows. An answer is one
value per variable in [-1, 1]; its sign is the truth value (targets +-1). The verifier
counts the clauses the decoded assignment leaves unsatisfied.

Baselines: a random assignment, and WalkSAT (Selman, Kautz & Cohen 1994: flip a variable
of an unsatisfied clause, the greedy choice or, with probability 1/2, a random one) with
``WALKSAT_FLIPS_PER_VARIABLE`` n flips from a random start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd import dimacs, metrics_io
from ired_cd.tasks import base

FIELDS = ("sat_variables", "sat_clauses", "sat_clauses_ood", "sat_train_instances",
          "sat_solutions")
CLAUSE_WIDTH = 3
WALKSAT_FLIPS_PER_VARIABLE = 5
WALKSAT_NOISE = 0.5
SOLUTION_CAP = 1 << 20  # enumeration stops here (n = 20 has at most 2^20 assignments)
DATASET_TAG, EVAL_TAG = 101, 102  # the random streams: default_rng([tag, seed, ...])
DATASET_FORMAT = 1  # part of the dataset cache's name: a new format never reads an old file


def random_formula(rng: np.random.Generator, variables: int, clauses: int) -> np.ndarray:
  """(clauses, 3) signed 1-based literals: 3 distinct variables per clause, random signs."""
  chosen = np.argsort(rng.random((clauses, variables)), axis=1)[:, :CLAUSE_WIDTH] + 1
  return chosen * (2 * rng.integers(0, 2, (clauses, CLAUSE_WIDTH)) - 1)


def canonical(literals) -> np.ndarray:
  """A formula's clauses in one order: (m, w) literals (0: none) -> (m, w), each clause's
  literals by variable (0s last), the clauses sorted by (variable, sign) pairs."""
  literals = np.asarray(literals, np.int64)
  key = np.where(literals == 0, np.iinfo(np.int32).max, 2 * np.abs(literals) + (literals < 0))
  order = np.argsort(key, axis=1, kind="stable")
  rows = np.take_along_axis(literals, order, axis=1)
  keys = np.take_along_axis(key, order, axis=1)
  return rows[np.lexsort(keys.T[::-1])]


def enumerate_solutions(literals, variables: int, keep: int, rng: np.random.Generator,
                        cap: int = SOLUTION_CAP):
  """(number of satisfying assignments (at most ``cap``), up to ``keep`` of them drawn
  uniformly without replacement, (k, variables) int8 +-1), enumerated by a SAT solver
  (base.enumerate_models)."""
  clauses = [[int(lit) for lit in c if lit] for c in np.asarray(literals)]
  count, kept = base.enumerate_models(clauses, variables, keep, rng, cap)
  return count, np.sign(np.asarray(kept, np.int64).reshape(-1, variables)).astype(np.int8)


def encode(literals, variables: int):
  """(..., m, w) literals -> (..., m * variables) float32 clause matrices (jnp; numpy in)."""
  literals = jnp.asarray(literals).astype(jnp.int32)
  matrix = jnp.sum(jax.nn.one_hot(jnp.abs(literals) - 1, variables)
                   * jnp.sign(literals)[..., None], axis=-2)
  return matrix.reshape(literals.shape[:-2] + (-1,))


@dataclasses.dataclass(frozen=True)
class Sat(base.DiscreteTask):
  """3-SAT at ``variables``; fields: the config's sat_* fields."""

  name = "sat"
  baselines = ("random", "walksat")
  file_suffixes = (".cnf",)

  variables: int = 20
  clauses: Tuple[int, int] = (60, 80)
  clauses_ood: int = 91
  train_instances: int = 20_000
  solutions: int = 32

  @property
  def max_clauses(self) -> int:
    return max(self.clauses[1], self.clauses_ood)

  @property
  def inp_dim(self) -> int:
    return self.max_clauses * self.variables

  @property
  def out_dim(self) -> int:
    return self.variables

  def describe(self) -> str:
    lo, hi = self.clauses
    return (f"3-SAT n={self.variables}, {lo}-{hi} clauses (harder {self.clauses_ood})")

  def _clause_count(self, rng, ood: bool) -> int:
    return self.clauses_ood if ood else int(rng.integers(self.clauses[0], self.clauses[1] + 1))

  def _padded(self, literals) -> np.ndarray:
    out = np.zeros((self.max_clauses, literals.shape[1]), np.int8)
    out[:len(literals)] = canonical(literals)
    return out

  def instances(self, rng, n: int, ood: bool, keep: int, cap: int = SOLUTION_CAP):
    """``n`` satisfiable instances: (literals (n, max_clauses, 3) int8, solutions
    (n, keep, variables) int8 (rows past the count repeat the first), counts (n,) of
    solutions kept, totals (n,) of solutions, counted up to ``cap``)."""
    literals = np.zeros((n, self.max_clauses, CLAUSE_WIDTH), np.int8)
    kept = np.zeros((n, keep, self.variables), np.int8)
    counts, totals = np.zeros(n, np.int32), np.zeros(n, np.int64)
    i = 0
    while i < n:
      formula = random_formula(rng, self.variables, self._clause_count(rng, ood))
      total, models = enumerate_solutions(formula, self.variables, keep, rng, cap)
      if not total:
        continue
      literals[i] = self._padded(formula)
      kept[i] = models[np.arange(keep) % len(models)]
      counts[i], totals[i] = len(models), total
      i += 1
    return literals, kept, counts, totals

  def eval_set(self, n, seed, ood):
    """Satisfiable instances from default_rng([EVAL_TAG, seed, ood]); targets: one solution
    each, drawn uniformly from all of them."""
    literals, kept, _, _ = self.instances(np.random.default_rng([EVAL_TAG, seed, int(ood)]), n,
                                          ood, keep=1)
    return (np.asarray(encode(literals, self.variables), np.float32),
            kept[:, 0].astype(np.float32))

  def build_data(self, seed, ood=False, cache_dir=None):
    """``train_instances`` instances and their solutions (``instances``), from
    default_rng([DATASET_TAG, seed, ood]); read from (or written to) ``cache_dir``."""
    path = None
    if cache_dir is not None:
      fields = dict(dataclasses.asdict(self), seed=seed, ood=ood, format=DATASET_FORMAT)
      digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
      path = os.path.join(cache_dir, f"sat_{digest}.npz")
      if os.path.exists(path):
        with np.load(path) as saved:
          return {k: saved[k] for k in ("literals", "solutions", "counts")}
    tic = time.time()
    literals, kept, counts, totals = self.instances(
        np.random.default_rng([DATASET_TAG, seed, int(ood)]), self.train_instances, ood,
        self.solutions)
    data = dict(literals=literals, solutions=kept, counts=counts)
    logging.info("sat dataset: %d instances (median %d solutions, %d kept each at most) built "
                 "in %.0f s, %.1f MB", self.train_instances, np.median(totals), self.solutions,
                 time.time() - tic, sum(a.nbytes for a in data.values()) / 1e6)
    if path is not None:
      os.makedirs(cache_dir, exist_ok=True)
      metrics_io.write_atomic(path, lambda f: np.savez(f, **data))
    return data

  def data_shapes(self):
    n = self.train_instances
    return dict(literals=jax.ShapeDtypeStruct((n, self.max_clauses, CLAUSE_WIDTH), jnp.int8),
                solutions=jax.ShapeDtypeStruct((n, self.solutions, self.variables), jnp.int8),
                counts=jax.ShapeDtypeStruct((n,), jnp.int32))

  def sample(self, key, batch_size, ood=False, data=None):
    """An instance and one of its kept solutions per row, drawn with ``key`` (the dataset
    was built for ``ood``)."""
    del ood
    data = jax.tree_util.tree_map(jnp.asarray, data)
    k_instance, k_solution = jax.random.split(key)
    i = jax.random.randint(k_instance, (batch_size,), 0, data["counts"].shape[0])
    count = data["counts"][i]
    j = jnp.minimum((jax.random.uniform(k_solution, (batch_size,)) * count).astype(jnp.int32),
                    count - 1)
    return (encode(data["literals"][i], self.variables),
            data["solutions"][i, j].astype(jnp.float32))

  values = (-1, 1)

  def decode(self, y):
    return (y >= 0) * 2 - 1

  def cnf(self, problem):
    matrix = np.asarray(problem).reshape(self.max_clauses, self.variables)
    return ([[int(v * (j + 1)) for j, v in enumerate(row) if v] for row in matrix if row.any()],
            self.variables)

  def from_model(self, model):
    return np.sign(np.asarray(model[:self.variables], np.int64))

  def encode(self, assignment):
    return np.asarray(assignment, np.float32)

  def violations(self, inputs, assignment):
    """Clauses (non-zero rows) with no true literal."""
    clauses = inputs.reshape(inputs.shape[0], self.max_clauses, self.variables)
    true = jnp.any(clauses * assignment[:, None, :] > 0, axis=-1)
    present = jnp.any(clauses != 0, axis=-1)
    return jnp.sum(present & ~true, axis=-1).astype(jnp.int32)

  def random_assignment(self, inputs, rng):
    return 2 * rng.integers(0, 2, (len(inputs), self.variables)) - 1

  def classical(self, inputs, rng):
    """WalkSAT from a random assignment, WALKSAT_FLIPS_PER_VARIABLE x n flips per instance."""
    clauses = np.asarray(inputs).reshape(len(inputs), self.max_clauses, self.variables)
    start = self.random_assignment(inputs, rng)
    return np.stack([walksat(c[np.any(c != 0, axis=1)], a, rng,
                             WALKSAT_FLIPS_PER_VARIABLE * self.variables)
                     for c, a in zip(clauses, start)])

  def instance_size(self, path: str):
    """(variables, clauses) of a DIMACS CNF file (dimacs.DimacsError if malformed)."""
    variables, clauses = dimacs.read_cnf(path)
    return variables, len(clauses)

  def fitting(self, sizes) -> dict:
    """Config fields of this task grown to hold formulas of ``sizes`` ((variables, clauses)
    each): sat_variables and sat_clauses_ood, never below this task's."""
    return dict(sat_variables=max([self.variables] + [v for v, _ in sizes]),
                sat_clauses_ood=max([self.max_clauses] + [m for _, m in sizes]))

  def read_instance(self, path: str):
    """(encoded formula (inp_dim,), number of variables) of a DIMACS CNF file; InstanceError
    for one beyond the model (more variables or clauses than it takes)."""
    variables, clauses = dimacs.read_cnf(path)
    if variables > self.variables:
      raise base.InstanceError(path, f"{variables} variables; the run's model takes at most "
                               f"{self.variables} (config sat_variables)")
    # Repeated literals count once; a clause with a literal and its negation (true in any
    # assignment) is dropped.
    kept = [sorted(set(c)) for c in clauses if not set(c) & {-lit for lit in c}]
    if len(kept) > self.max_clauses:
      raise base.InstanceError(path, f"{len(kept)} clauses; the run's model takes at most "
                               f"{self.max_clauses} (config sat_clauses, sat_clauses_ood)")
    width = max((len(c) for c in kept), default=1)
    literals = np.zeros((max(len(kept), 1), width), np.int64)
    for row, clause in zip(literals, kept):
      row[:len(clause)] = clause
    padded = np.zeros((self.max_clauses, width), np.int64)
    padded[:len(kept)] = canonical(literals)[:len(kept)]
    return np.asarray(encode(padded, self.variables), np.float32), variables

  def format_answer(self, answer, size: int, violations: int) -> str:
    """The .sol text of an answer (out_dim,) for a formula of ``size`` variables."""
    return dimacs.sat_solution(self.decode(np.asarray(answer))[:size], violations)

  def distribution_warnings(self, problems):
    clauses = np.sum(np.any(problems.reshape(len(problems), self.max_clauses, self.variables)
                            != 0, axis=2), axis=1)
    lo, hi = self.clauses
    outside = (clauses < lo) | (clauses > max(hi, self.clauses_ood))
    if not outside.any():
      return []
    return [f"{np.sum(outside)} of {len(problems)} formulas have a clause count outside the "
            f"training range {lo}-{hi} and the harder set's {self.clauses_ood} (first: problem "
            f"{np.flatnonzero(outside)[0]}, {clauses[outside][0]} clauses); their answers may "
            "be poor"]


def walksat(clauses: np.ndarray, assignment: np.ndarray, rng: np.random.Generator,
            flips: int) -> np.ndarray:
  """WalkSAT on one formula, clauses (m, n) in {-1, 0, 1}, from ``assignment`` (n,) +-1:
  at most ``flips`` flips; returns the first satisfying assignment, else the last."""
  a = assignment.copy()
  for _ in range(flips):
    unsatisfied = np.flatnonzero(~np.any(clauses * a > 0, axis=1))
    if not unsatisfied.size:
      break
    clause = clauses[rng.choice(unsatisfied)]
    candidates = np.flatnonzero(clause)
    if rng.random() < WALKSAT_NOISE:
      flip = rng.choice(candidates)
    else:  # the flip that breaks the fewest clauses now satisfied
      satisfied = clauses[np.any(clauses * a > 0, axis=1)]
      only_true = np.sum(satisfied * a > 0, axis=1) == 1
      breaks = [np.sum(only_true & (satisfied[:, v] * a[v] > 0)) for v in candidates]
      flip = candidates[int(np.argmin(breaks))]
    a[flip] = -a[flip]
  return a
