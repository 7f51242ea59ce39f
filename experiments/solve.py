r"""Solve your own problems with a trained run (ired_cd.solve).

  python -m experiments.solve --workdir=results/ds_inverse/cd_full_cpu --input=A.npy \
      --output=X.npy --inner_steps=5,10,20
  python -m experiments.solve --workdir=results/sat/cd_full_cpu --input=uf20-91/ \
      --output=solutions/ --particles=64

Matrix tasks: A.npy holds the problems, e.g. for the inverse task matrices
(n, rank, rank) or (n, rank^2); the answers X ~ A^{-1} have the same layout: X.npy
for one inner-step count, X_steps5.npy, X_steps10.npy, ... for several. Printed per
count: the mean and median residual (||A X - I||_F) and the MSE against the exact
answer (numpy.linalg.inv), where the task has them.

Tasks with instance files (3-SAT: DIMACS .cnf; colouring: DIMACS .col): --input is
one file or a directory of them (of any size for a composed energy, energy_model
'clauses': the model is built at the largest file's size, the parameters
unchanged), --output a directory (made if missing) that gets
NAME.sol per instance (NAME_steps5.sol, ... for several counts): the SAT
competition's output for a formula (s SATISFIABLE only when every clause is
satisfied, else s UNKNOWN, then the v lines), one v NODE COLOUR line per node for a
graph. Printed: each file's violations, then how many were solved of how many read,
beside a random assignment's, the best of K random ones' and the classical method's
(WalkSAT, DSATUR) on the same files.

Uses the EMA parameters of the newest (or --checkpoint_step) checkpoint; the answers
are the sampler's unscaled x0 (decoded, for instance files). --particles=K: K
re-noised trajectories per problem, the answer the --pick among them (oracle: the
fewest violations or least residual, ties to the lower energy; energy: the lowest E). Bad input: one line on
stderr, exit 1, nothing written: a malformed file (named with its line), an instance
beyond the model's size, an --output that would overwrite --input, or problems whose
answers are not finite, included. Every output file is written atomically (a temporary
file, then a rename). Problems unlike the training inputs are solved with a warning
line each.
"""

import os
import sys

import numpy as np
from absl import app, flags

from experiments import cli
from ired_cd import schema
from ired_cd import instruments, solve, tasks

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of experiments.run (required).")
_INPUT = flags.DEFINE_string("input", None, "The problems (required): a .npy file, or for "
                             "3-SAT and colouring a DIMACS file or a directory of them.")
_OUTPUT = flags.DEFINE_string("output", None, "Where the answers go (required): a .npy file, or "
                              "for instance files a directory; with several --inner_steps, "
                              "one file per count: X_steps5.npy, NAME_steps5.sol, ...")
_INNER = flags.DEFINE_list("inner_steps", ["5"], "Inner descent steps per timestep, e.g. 5,10,20.")
_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: the newest).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampler's start noise.")
_PARTICLES = flags.DEFINE_integer("particles", 1, "Trajectories per problem, re-noised between "
                                  "timesteps when more than 1; the answer is --pick's.")
_PICK = flags.DEFINE_string("pick", "oracle", "Which particle answers: oracle (fewest "
                            "violations or least residual, ties to the lower energy) or energy "
                            "(the lowest E at t = 0).")
_STATS = flags.DEFINE_bool("descent_stats", False, "Also print the energy descent's "
                           "instruments per timestep (ired_cd.instruments.describe_descent).")
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


def output_paths(output, inner_steps, suffix=".npy"):
  """{inner_steps: path}: ``output`` for one count, <stem>_steps<k><suffix> for several."""
  stem = output[:-len(suffix)] if output.endswith(suffix) else output
  if len(inner_steps) == 1:
    return {inner_steps[0]: f"{stem}{suffix}"}
  return {k: f"{stem}_steps{k}{suffix}" for k in inner_steps}


def solution_paths(output_dir, inputs, inner_steps):
  """{inner_steps: [DIR/NAME.sol per input file]} (NAME: the file's name without suffix)."""
  names = [os.path.splitext(os.path.basename(path))[0] for path in inputs]
  per_name = [output_paths(os.path.join(output_dir, name), inner_steps, ".sol")
              for name in names]
  return {k: [paths[k] for paths in per_name] for k in inner_steps}


def check_output_dir(output_dir):
  """SolveError naming --output unless ``output_dir`` is a writable directory, or one that can
  be made in an existing directory."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise solve.SolveError("output", f"{output_dir} is a file; name a directory for the .sol "
                           "files")
  parent = output_dir if os.path.isdir(output_dir) else os.path.dirname(
      os.path.abspath(output_dir))
  if not os.path.isdir(parent):
    raise solve.SolveError("output", f"directory {parent} does not exist")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise solve.SolveError("output", f"directory {parent} is not writable")


def check_outputs(paths, input_paths, made=()):
  """SolveError naming --output unless every path of ``paths`` can be written without
  overwriting one of ``input_paths`` (compared as real paths, links resolved); ``made``:
  directories this call will create (not there yet)."""
  for path in paths:
    parent = os.path.dirname(os.path.abspath(path))
    if parent not in {os.path.abspath(d) for d in made}:
      if not os.path.isdir(parent):
        raise solve.SolveError("output", f"directory {parent} does not exist")
      if not os.access(parent, os.W_OK | os.X_OK):
        raise solve.SolveError("output", f"directory {parent} is not writable")
    if os.path.isdir(path):
      raise solve.SolveError("output", f"{path} is a directory; name a file")
    for input_path in input_paths:
      if os.path.realpath(path) == os.path.realpath(input_path) or (
          os.path.exists(path) and os.path.samefile(path, input_path)):
        raise solve.SolveError("output", f"{path} would overwrite the input {input_path}; "
                               "name another file")


def describe(task, metrics):
  """A continuous task's scores (solve.score) as one line."""
  residual, exact = task.residual_label, task.exact_label
  parts = []
  if "residual_mean" in metrics:
    parts.append(f"residual {residual} mean {metrics['residual_mean']:.5g} median "
                 f"{metrics['residual_median']:.5g}")
  if "mse" in metrics:
    parts.append(f"MSE vs {exact} {metrics['mse']:.5g}")
  return ", ".join(parts) or "no residual or exact answer for this task"


def describe_baselines(task, problems, particles, seed):
  """A discrete task's trivial baseline and classical method on ``problems``, as one line:
  solved and mean violations of a random assignment (the best of ``particles`` of them too)
  and of the task's classical method (WalkSAT, DSATUR)."""
  sets = {"": (problems, None)}
  scores = task.baseline_scores(sets, seed)
  if particles > 1:
    scores.update(task.random_particle_scores(sets, [particles], seed))
  names = list(task.baselines) + ([f"p{particles}_random"] if particles > 1 else [])
  labels = dict(zip(names, ["a random assignment", task.baselines[1],
                            f"the best of {particles} random assignments"]))
  n = len(problems)
  return "beside: " + "; ".join(
      f"{labels[name]} solved {round(scores[f'solved_{name}'] * n)} of {n} (violations "
      f"{scores[f'violations_{name}']:.2f})" for name in names)


def prepare_arrays(task, inner_steps):
  """(problems, {inner_steps: output path}, the input's shape) of a .npy --input."""
  inputs = read_input(_INPUT.value)
  problems = solve.check_inputs(inputs, task)
  paths = output_paths(_OUTPUT.value, inner_steps)
  check_outputs(paths.values(), [_INPUT.value])
  return problems, paths, inputs.shape


def prepare_files(task, inner_steps):
  """(problems, sizes, input paths, {inner_steps: [output path per input]}) of instance files."""
  inputs = solve.instance_paths(task, _INPUT.value)
  problems, sizes = solve.read_instances(task, inputs)
  check_output_dir(_OUTPUT.value)
  paths = solution_paths(_OUTPUT.value, inputs, inner_steps)
  check_outputs([p for per_count in paths.values() for p in per_count], inputs,
                made=[_OUTPUT.value])
  return problems, sizes, inputs, paths


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
    solve.check_particles(_PARTICLES.value, _PICK.value)
    trained = solve.read_config(_WORKDIR.value, _STEP.value)
    config, task = trained, tasks.from_config(trained)
    if task.file_suffixes:
      config = solve.fit_config(trained, solve.instance_paths(task, _INPUT.value))
      task = tasks.from_config(config)
      problems, sizes, inputs, paths = prepare_files(task, inner_steps)
    else:
      problems, paths, input_shape = prepare_arrays(task, inner_steps)
    model = solve.load(_WORKDIR.value, _STEP.value, config)
    answers = {k: solve.answer(model, problems, k, _SEED.value, _PARTICLES.value, _PICK.value)
               for k in paths}
    solve.check_answers(answers)
  except solve.SolveError as err:
    sys.exit(f"error: --{err.field}: {err.message}")
  for line in task.distribution_warnings(problems):
    print(f"warning: {line}", file=sys.stderr)
  if config is not trained:
    print(f"warning: {task.describe()}: beyond the training's "
          f"{tasks.from_config(trained).describe()}; the composed energy's parameters serve any "
          "size, its answers may be poorer", file=sys.stderr)
  print(f"{len(problems)} problems of {task.describe()}, run {_WORKDIR.value} "
        f"({config.mining_strategy}), checkpoint step {model.step}, EMA parameters; answers: "
        "the sampler's unscaled x0" + (", decoded" if task.file_suffixes else "")
        + (f"; of {_PARTICLES.value} re-noised particles each, the {_PICK.value}'s pick"
           if _PARTICLES.value > 1 else ""))
  for k, path in paths.items():
    scores = solve.score(task, problems, answers[k])
    if task.file_suffixes:
      os.makedirs(_OUTPUT.value, exist_ok=True)
      solve.write_solutions(task, path, answers[k], sizes, scores["violations"])
      for name, count in zip(inputs, scores["violations"]):
        print(f"  {name}: {count} violations")
      solved = int(np.sum(scores["violations"] == 0))
      print(f"inner_steps={k}: solved {solved} of {len(problems)} -> {os.path.dirname(path[0])}")
      if k == inner_steps[-1]:
        print(describe_baselines(task, problems, _PARTICLES.value, _SEED.value))
    else:
      solve.save(path, answers[k].reshape(solve.answer_shape(input_shape, task)))
      print(f"inner_steps={k}: {describe(task, scores)} -> {path}")
    if _STATS.value:
      print(instruments.describe_descent(model, problems, k, _SEED.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
