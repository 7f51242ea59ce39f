r"""Strategy ablation: every (strategy, seed) as a normal run, then one table and one figure.

  python -m experiments.ablate --config=configs/q204.py:cpu \
      --strategies=none,nce_random,ired,cd_langevin,cd_langevin_replay,cd_full --seeds=3 \
      --workdir=results/ablation

Each run trains (or resumes) in WORKDIR/<strategy>/seed<k>: the config with
the strategy's stage switches (schema.apply_strategy) and seed k. A run that
already completed (or diverged) with the same config is skipped, so rerunning
the command resumes the ablation. A run that fails (diverges, raises) is
recorded and flagged; the others go on. Then:

  WORKDIR/ablation.md    the table: eval MSE (mean ± std over completed seeds, and
                         relative to the mean predictor), final ∇E norm and energy
                         gap, steps/s, and per-seed flags (collapse, divergence)
  WORKDIR/ablation.json  the same numbers, and every run's record
  WORKDIR/ablation.png   eval MSE vs step and the training-health curves

With --inner_steps=0,1,2,5,10,20 every completed run's final checkpoint is also
scored with each number of inner descent steps (its WORKDIR/<strategy>/seed<k>/
eval.json, reused when it already holds that sweep), and the report gains a
table of MSE against inner steps (mean ± std over seeds) and
WORKDIR/ablation_inner_steps.png (ired_cd/ablation.py).

With --eval_particles=1,8,64 every completed run's final checkpoint is also scored with
K trajectories per problem (re-noised: --eval_renoise; resampled by energy:
--eval_resample_tau), per pick (one particle, the energy's pick, the oracle's): a table
and WORKDIR/ablation_particles.png.

With --merge=A/ablation.json,B/ablation.json nothing trains: the reports of grids
run apart on one protocol (stage by stage, or on several machines) become one
report in WORKDIR, with every command that made it. --first_seed splits a grid seed
by seed: --first_seed=2 --seeds=1 runs seed 2 alone.
"""

import os
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from ired_cd import ablation, answer_landscape, landscape, metrics_io, schema, tasks
from ired_cd.matmul import MATMUL_DTYPES

_CONFIG = config_flags.DEFINE_config_file("config", "configs/q204.py:cpu",
                                          "Config file (and :variant) every run starts from.")
_STRATEGIES = flags.DEFINE_list("strategies", list(schema.STRATEGIES),
                                "Strategies to compare (schema.apply_strategy).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per strategy: first_seed .. first_seed+seeds-1.")
_FIRST_SEED = flags.DEFINE_integer(
    "first_seed", 0, "The first seed: a grid split by seed across machines or sessions "
    "(--first_seed=2 --seeds=1 runs seed 2 alone), joined by --merge.")
_WORKDIR = flags.DEFINE_string("workdir", "results/ablation", "Ablation directory.")
_INNER = flags.DEFINE_list(
    "inner_steps", None, "Also score every completed run's final checkpoint with each of these "
    "numbers of inner descent steps, e.g. 0,1,2,5,10,20 (table and ablation_inner_steps.png).")
_LANDSCAPE = flags.DEFINE_integer(
    "landscape_size", None, "Also measure every completed run's energy landscape "
    "(experiments.landscape) on this many problems per set, e.g. 256 (its landscape.json, "
    "reused on rerun; a table and ablation_landscape.png).")
_LANDSCAPE_DTYPE = flags.DEFINE_enum(
    "landscape_matmul_dtype", landscape.Settings.matmul_dtype, list(MATMUL_DTYPES),
    "The products' operand dtype of the landscape measurements.")
_PARTICLES = cli.define_particle_flags(
    "Also score every completed run's final checkpoint with K trajectories per problem for each K, e.g. 1,8,64 (a table and ablation_particles.png)")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Train nothing: write the table and figure from the runs that have "
    "finished (e.g. while the grid runs in another process).")
_MERGE = flags.DEFINE_list(
    "merge", None, "Train nothing: one report in --workdir from these ablation.json files of "
    "grids run apart on one protocol.")


def read_report(path):
  """The ablation.json at ``path``; ConfigError (one line) if it is missing or not one."""
  try:
    report = metrics_io.read_json(path)
  except (OSError, ValueError):  # a folder, unreadable, not JSON
    report = None
  if not isinstance(report, dict) or "runs" not in report:
    raise schema.ConfigError(f"--merge: {path} is not an ablation.json (experiments.ablate's "
                             "report)")
  return report


def main(argv):
  cli.start(argv)
  workdir = _WORKDIR.value
  # The command that makes the grid: a report-only call names the training one.
  command = "python -m experiments.ablate " + shlex.join(
      a for a in sys.argv[1:] if not a.lstrip("-").startswith(("report_only", "noreport_only")))
  try:
    cli.check_workdir("--workdir", workdir)
    cli.check_choices(_STRATEGIES, schema.STRATEGIES)
    inner = cli.step_counts(_INNER.name, _INNER.value)
    particles = _PARTICLES()
    if _LANDSCAPE.value is not None:
      cli.check_at_least(_LANDSCAPE, 1)
    if _MERGE.value:
      out = os.path.realpath(os.path.join(workdir, "ablation.json"))
      if out in {os.path.realpath(p) for p in _MERGE.value}:
        raise schema.ConfigError(f"--workdir: {workdir} holds a report given to --merge, which "
                                 "the merged one would overwrite: give another --workdir")
      report = ablation.merge([read_report(path) for path in _MERGE.value], command)
      ablation.write_report(report, workdir)
    else:
      measures = answer_landscape.measures_for(tasks.from_config(_CONFIG.value))
      settings = (measures.Settings(eval_size=_LANDSCAPE.value,
                                    matmul_dtype=_LANDSCAPE_DTYPE.value)
                  if _LANDSCAPE.value is not None else None)
      report = ablation.run_ablation(_CONFIG.value, _STRATEGIES.value, _SEEDS.value, workdir,
                                     command, _REPORT_ONLY.value, inner, settings, particles,
                                     _FIRST_SEED.value)
  except schema.ConfigError as err:
    sys.exit(f"error: {err}")
  runs = report["runs"]
  flagged = [r for r in runs if r["status"] != "completed" or r["collapse_step"] is not None]
  print(f"ablation: {os.path.join(workdir, 'ablation.md')}, ablation.json, ablation.png"
        + (f" ({len(flagged)} of {len(runs)} runs flagged: see the table)" if flagged else ""))
  if any(r["status"] == "interrupted" for r in report["runs"]):
    print("interrupted: rerun the same command to resume.")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
