r"""Measure a trained run's energy landscape (ired_cd.landscape).

  python -m experiments.landscape --workdir=results/ds_inverse/cd_full_cpu --eval_size=256

Writes WORKDIR/landscape.json (acceptance, repair, energy_residual_spearman,
energy_error_spearman, truth_below_answer, scaling, breadth; each for the
in-distribution set and, with the suffix _ood, the harder one; the run's identity
under 'run') and WORKDIR/landscape.png, from the EMA parameters of the newest (or
--checkpoint_step) checkpoint. Bad flags: one line on stderr, exit 1, nothing written.
"""

import sys

from absl import app, flags

from experiments import cli
from ired_cd import landscape, solve
from ired_cd.matmul import MATMUL_DTYPES

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of experiments.run (required).")
_SIZE = flags.DEFINE_integer("eval_size", 256, "Problems per evaluation set.")
_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: the newest).")
_DTYPE = flags.DEFINE_string("matmul_dtype", None,
                             f"One of {', '.join(MATMUL_DTYPES)} (default: the run's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the start noises, perturbations and chains.")


def check_flags():
  """SolveError naming the first bad flag."""
  if not _WORKDIR.value:
    raise solve.SolveError("workdir", "required")
  if _SIZE.value is None or _SIZE.value < 1:
    raise solve.SolveError("eval_size", f"a positive integer, got {_SIZE.value}")
  if _DTYPE.value is not None and _DTYPE.value not in MATMUL_DTYPES:
    raise solve.SolveError("matmul_dtype", f"one of {', '.join(MATMUL_DTYPES)}, got "
                           f"{_DTYPE.value!r}")
  solve.read_config(_WORKDIR.value, _STEP.value)


def main(argv):
  cli.start(argv)
  try:
    check_flags()
  except solve.SolveError as err:
    sys.exit(f"error: --{err.field}: {err.message}")
  result = landscape.evaluate_run(_WORKDIR.value, _SIZE.value, _STEP.value, _DTYPE.value,
                                  _SEED.value)
  paths = landscape.write(_WORKDIR.value, result)
  columns = landscape.summary(result)
  print(", ".join(f"{name}={value:.4g}" for name, value in columns.items()))
  print(f"-> {paths[0]}, {paths[1]}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
