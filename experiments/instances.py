r"""Write random satisfiable 3-SAT formulas as DIMACS files, as SATLIB made its uniform sets
(ired_cd/tasks/sat.py: 3 distinct variables a clause, random signs, kept when a SAT solver
finds them satisfiable), e.g. 256 of uf50-218's distribution for experiments.solve:

  python -m experiments.instances --variables=50 --clauses=218 --count=256 --output=uf50-218/

Files DIR/uf<N>-<M>_<k>.cnf, k = 0 .. count-1, from default_rng([INSTANCES_TAG, --seed]).
Bad flags, or an --output that holds any of these names already: one line on stderr, exit
1, nothing written. Each file is written atomically (a temporary file, then a rename).
"""

import os
import sys

import numpy as np
from absl import app, flags

from experiments import cli
from ired_cd import dimacs, metrics_io, schema, tasks

INSTANCES_TAG = 104  # this tool's random stream (the tasks' are 101-103)

_VARIABLES = flags.DEFINE_integer("variables", 50, "Variables per formula (at least 3).")
_CLAUSES = flags.DEFINE_integer("clauses", 218, "Clauses per formula (at least 1).")
_COUNT = flags.DEFINE_integer("count", 256, "Formulas to write (at least 1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the formulas.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the .cnf files (required; made "
                              "if missing).")


def paths():
  """The files this call writes; ConfigError naming the first bad flag."""
  cli.check_at_least(_VARIABLES, 3)
  cli.check_at_least(_CLAUSES, 1)
  cli.check_at_least(_COUNT, 1)
  if not _OUTPUT.value:
    raise schema.ConfigError("--output: required")
  cli.check_workdir("--output", _OUTPUT.value)
  names = [os.path.join(_OUTPUT.value, f"uf{_VARIABLES.value}-{_CLAUSES.value}_{k}.cnf")
           for k in range(_COUNT.value)]
  taken = [name for name in names if os.path.exists(name)]
  if taken:
    raise schema.ConfigError(f"--output: {taken[0]} exists ({len(taken)} of the {len(names)} "
                             "files do): name another directory or --seed")
  return names


def main(argv):
  cli.start(argv)
  try:
    names = paths()
  except schema.ConfigError as err:
    sys.exit(f"error: {err}")
  task = tasks.get_task("sat", variables=_VARIABLES.value, clauses=(_CLAUSES.value,) * 2,
                        clauses_ood=_CLAUSES.value, train_instances=1)
  literals, _, _, _ = task.instances(np.random.default_rng([INSTANCES_TAG, _SEED.value]),
                                     _COUNT.value, ood=True, keep=1, cap=1)
  os.makedirs(_OUTPUT.value, exist_ok=True)
  for name, formula in zip(names, literals):
    text = dimacs.cnf_text(_VARIABLES.value, [[int(v) for v in c if v] for c in formula],
                           f"{os.path.basename(name)}: random 3-SAT, satisfiable (minisat), "
                           f"experiments.instances --seed={_SEED.value}")
    metrics_io.write_atomic(name, lambda f, text=text: f.write(text), binary=False)
  print(f"{len(names)} satisfiable formulas of {_VARIABLES.value} variables and "
        f"{_CLAUSES.value} clauses -> {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
