r"""Solve your own problems with a trained run (ired_cd.solve).

  python -m experiments.solve --workdir=results/ds_inverse/cd_full_cpu --input=A.npy \
      --output=X.npy --inner_steps=5,10,20

For the inverse task A.npy holds matrices, (n, rank, rank) or (n, rank^2);
the answers X ~ A^{-1} have the same layout: X.npy for one inner-step count,
X_steps5.npy, X_steps10.npy, ... for several. Uses the EMA parameters of the
newest (or --checkpoint_step) checkpoint; the answers are the sampler's
unscaled x0. Prints per inner-step count the mean and median residual
(||A X - I||_F) and the MSE against the exact answer (numpy.linalg.inv), where
the task has them. Bad input: one line on stderr, exit 1, nothing written: an
--output that would overwrite --input, or problems whose answers are not finite,
included. The answers are written atomically (a temporary file, then a rename).
Problems unlike the training inputs are solved with a warning line each.
"""

import os
import sys

import numpy as np
from absl import app, flags

from experiments import cli
from ired_cd import schema
from ired_cd import landscape, solve, tasks

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of experiments.run (required).")
_INPUT = flags.DEFINE_string("input", None, ".npy file of problems (required).")
_OUTPUT = flags.DEFINE_string("output", None, ".npy file for the answers (required); with "
                              "several --inner_steps, one file per count: X_steps5.npy, ...")
_INNER = flags.DEFINE_list("inner_steps", ["5"], "Inner descent steps per timestep, e.g. 5,10,20.")
_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: the newest).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampler's start noise.")
_STATS = flags.DEFINE_bool("descent_stats", False, "Also print the energy descent's "
                           "instruments per timestep (ired_cd.landscape.describe_descent).")

# How the printout names each task's residual and exact answer.
METRIC_NAMES = {"inverse": ("||A X - I||_F", "numpy.linalg.inv"),
                "addition": ("||X - (A1 + A2)||_F", "A1 + A2")}
NPY_MAGIC = b"\x93NUMPY"  # how numpy.save's files begin


def read_input(path):
  """The array in the .npy file ``path``; SolveError naming --input otherwise."""
  try:
    with open(path, "rb") as f:
      magic = f.read(len(NPY_MAGIC))
    if magic == NPY_MAGIC:
      return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as err:
    raise solve.SolveError("input", f"cannot read {path} as a .npy array ({err})") from err
  if magic.startswith(b"PK"):
    raise solve.SolveError("input", f"{path} is a .npz archive; one .npy array expected")
  raise solve.SolveError("input", f"{path} is not a .npy file written by numpy.save (a text "
                         "file? numpy.save(path, numpy.loadtxt(text_file)) makes one)")


def output_paths(output, inner_steps):
  """{inner_steps: path}: ``output`` for one count, <stem>_steps<k>.npy for several."""
  stem = output[:-len(".npy")] if output.endswith(".npy") else output
  if len(inner_steps) == 1:
    return {inner_steps[0]: f"{stem}.npy"}
  return {k: f"{stem}_steps{k}.npy" for k in inner_steps}


def check_outputs(paths, input_path):
  """SolveError naming --output unless every path of ``paths`` can be written without
  overwriting ``input_path`` (compared as real paths, links resolved)."""
  for path in paths:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
      raise solve.SolveError("output", f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
      raise solve.SolveError("output", f"directory {parent} is not writable")
    if os.path.isdir(path):
      raise solve.SolveError("output", f"{path} is a directory; name a .npy file")
    if os.path.realpath(path) == os.path.realpath(input_path) or (
        os.path.exists(path) and os.path.samefile(path, input_path)):
      raise solve.SolveError("output", f"{path} would overwrite the input {input_path}; "
                             "name another file")


def describe(task_name, metrics):
  residual, exact = METRIC_NAMES.get(task_name, ("residual", "the exact answer"))
  parts = []
  if "residual_mean" in metrics:
    parts.append(f"residual {residual} mean {metrics['residual_mean']:.5g} median "
                 f"{metrics['residual_median']:.5g}")
  if "mse" in metrics:
    parts.append(f"MSE vs {exact} {metrics['mse']:.5g}")
  return ", ".join(parts) or "no residual or exact answer for this task"


def main(argv):
  cli.start(argv)
  try:
    for flag in (_WORKDIR, _INPUT, _OUTPUT):
      if not flag.value:
        raise solve.SolveError(flag.name, "required")
    try:
      inner_steps = solve.check_inner_steps(cli.step_counts(_INNER.name, _INNER.value))
    except schema.ConfigError as err:
      raise solve.SolveError("inner_steps", f"integers >= 0, got {_INNER.value}") from err
    config = solve.read_config(_WORKDIR.value, _STEP.value)
    task = tasks.get_task(config.task, config.rank)
    inputs = read_input(_INPUT.value)
    problems = solve.check_inputs(inputs, task, config.rank)
    paths = output_paths(_OUTPUT.value, inner_steps)
    check_outputs(paths.values(), _INPUT.value)
    model = solve.load(_WORKDIR.value, _STEP.value)
    answers = {k: solve.answer(model, problems, k, _SEED.value) for k in paths}
    solve.check_answers(answers)
  except solve.SolveError as err:
    sys.exit(f"error: --{err.field}: {err.message}")
  for line in solve.distribution_warnings(task, config.rank, problems):
    print(f"warning: {line}", file=sys.stderr)
  print(f"{len(problems)} {task.name} problems ({config.rank}x{config.rank}), run "
        f"{_WORKDIR.value} ({config.mining_strategy}), checkpoint step {model.step}, EMA "
        "parameters; answers: the sampler's unscaled x0")
  shape = solve.answer_shape(inputs.shape, task, config.rank)
  for k, path in paths.items():
    solve.save(path, answers[k].reshape(shape))
    print(f"inner_steps={k}: {describe(task.name, solve.score(task, problems, answers[k]))} "
          f"-> {path}")
    if _STATS.value:
      print(landscape.describe_descent(model, problems, k, _SEED.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
