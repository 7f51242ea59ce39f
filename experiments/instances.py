r"""Write random instances as DIMACS files for experiments.solve: satisfiable 3-SAT formulas,
as SATLIB made its uniform sets (ired_cd/tasks/sat.py: 3 distinct variables a clause, random
signs, kept when a SAT solver finds them satisfiable), or planted colourable graphs
(ired_cd/tasks/colouring.py: a hidden random colouring, edges only between its colours), e.g.

  python -m experiments.instances --variables=50 --clauses=218 --count=256 --output=uf50-218/
  python -m experiments.instances --task=colouring --nodes=100 --degree=4 --output=col100/

Files DIR/uf<N>-<M>_<k>.cnf or DIR/col<N>-<degree>_<k>.col, k = 0 .. count-1, from
default_rng([INSTANCES_TAG, --seed]). Bad flags, or an --output that holds any of these names
already: one line on stderr, exit 1, nothing written. Each file is written atomically (a
temporary file, then a rename).
"""

import os
import sys

import numpy as np
from absl import app, flags

from experiments import cli
from ired_cd import dimacs, metrics_io, schema, tasks

INSTANCES_TAG = 104  # this tool's random stream (the tasks' are 101-103)
TASKS = ("sat", "colouring")

_TASK = flags.DEFINE_enum("task", "sat", TASKS, "The instances' task.")
_VARIABLES = flags.DEFINE_integer("variables", 50, "sat: variables per formula (at least 3).")
_CLAUSES = flags.DEFINE_integer("clauses", 218, "sat: clauses per formula (at least 1).")
_NODES = flags.DEFINE_integer("nodes", 50, "colouring: nodes per graph (at least 2).")
_COLOURS = flags.DEFINE_integer("colours", 3, "colouring: colours of the hidden colouring "
                                "(at least 2).")
_DEGREE = flags.DEFINE_float("degree", 4.0, "colouring: average degree (above 0; 3-colouring's "
                             "threshold is near 4.69).")
_COUNT = flags.DEFINE_integer("count", 256, "Instances to write (at least 1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the instances.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the files (required; made if "
                              "missing).")


def paths():
  """The files this call writes; ConfigError naming the first bad flag."""
  if _TASK.value == "sat":
    cli.check_at_least(_VARIABLES, 3)
    cli.check_at_least(_CLAUSES, 1)
    stem, suffix = f"uf{_VARIABLES.value}-{_CLAUSES.value}", "cnf"
  else:
    cli.check_at_least(_NODES, 2)
    cli.check_at_least(_COLOURS, 2)
    if not _DEGREE.value > 0:
      raise schema.ConfigError(f"--degree: must be above 0, got {_DEGREE.value:g}")
    stem, suffix = f"col{_NODES.value}-{_DEGREE.value:g}", "col"
  cli.check_at_least(_COUNT, 1)
  if not _OUTPUT.value:
    raise schema.ConfigError("--output: required")
  cli.check_workdir("--output", _OUTPUT.value)
  names = [os.path.join(_OUTPUT.value, f"{stem}_{k}.{suffix}") for k in range(_COUNT.value)]
  taken = [name for name in names if os.path.exists(name)]
  if taken:
    raise schema.ConfigError(f"--output: {taken[0]} exists ({len(taken)} of the {len(names)} "
                             "files do): name another directory or --seed")
  return names


def texts(names, rng):
  """Each file's DIMACS text, in the order of ``names``."""
  made = f"experiments.instances --seed={_SEED.value}"
  if _TASK.value == "sat":
    task = tasks.get_task("sat", variables=_VARIABLES.value, clauses=(_CLAUSES.value,) * 2,
                          clauses_ood=_CLAUSES.value, train_instances=1)
    literals, _, _, _ = task.instances(rng, len(names), ood=True, keep=1, cap=1)
    return [dimacs.cnf_text(_VARIABLES.value, [[int(v) for v in c if v] for c in formula],
                            f"{os.path.basename(name)}: random 3-SAT, satisfiable (minisat), "
                            f"{made}") for name, formula in zip(names, literals)]
  task = tasks.get_task("colouring", nodes=_NODES.value, colours=_COLOURS.value,
                        degree=_DEGREE.value, degree_ood=_DEGREE.value)
  adjacency, _ = task.planted(rng, len(names), ood=False)
  upper = np.triu(adjacency.reshape(-1, _NODES.value, _NODES.value), 1)
  return [dimacs.col_text(_NODES.value, [(u + 1, v + 1) for u, v in zip(*np.nonzero(graph))],
                          f"{os.path.basename(name)}: planted {_COLOURS.value}-colourable graph, "
                          f"average degree {_DEGREE.value:g}, {made}")
          for name, graph in zip(names, upper)]


def main(argv):
  cli.start(argv)
  try:
    names = paths()
  except schema.ConfigError as err:
    sys.exit(f"error: {err}")
  os.makedirs(_OUTPUT.value, exist_ok=True)
  for name, text in zip(names, texts(names, np.random.default_rng([INSTANCES_TAG, _SEED.value]))):
    metrics_io.write_atomic(name, lambda f, text=text: f.write(text), binary=False)
  kind = (f"satisfiable formulas of {_VARIABLES.value} variables and {_CLAUSES.value} clauses"
          if _TASK.value == "sat" else f"planted {_COLOURS.value}-colourable graphs of "
          f"{_NODES.value} nodes, average degree {_DEGREE.value:g}")
  print(f"{len(names)} {kind} -> {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
