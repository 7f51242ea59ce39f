"""Bad command lines: one line on stderr naming the flag or path, exit 1, no traceback, and
nothing on disk created or changed.

Every case is a real subprocess of the tool; each imports JAX (seconds of CPU), so the
module's fixture starts them all at once and each test reads its case's result. A directory
without write permission is one that os.access says is not writable, whatever the uid (root
writes through any permission bits, and CI runs as root).
"""

import concurrent.futures
import os
import subprocess
import sys

import jax
import pytest

from tests.conftest import assert_refused

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, "configs", "q204.py")
CONFIG = f"--config={CONFIG_FILE}:tiny"
# python -c READ_ONLY DIR TOOL ARGS...: ``python -m TOOL ARGS...`` with os.access refusing
# writes to DIR.
READ_ONLY = """
import os, runpy, sys
denied, real_access = os.path.realpath(sys.argv[1]), os.access
os.access = lambda path, mode, *args, **kwargs: (
    not (mode & os.W_OK and os.path.realpath(path) == denied)
    and real_access(path, mode, *args, **kwargs))
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _file(case_dir):
  with open(os.path.join(case_dir, "afile"), "w") as f:
    f.write("not a directory\n")
  return "afile"


def _read_only(case_dir):
  """A directory holding a run's config.json, without write permission (READ_ONLY)."""
  os.makedirs(os.path.join(case_dir, "ro"))
  with open(os.path.join(case_dir, "ro", "config.json"), "w") as f:
    f.write("{}\n")
  return "ro"


def _report(case_dir):
  """A directory holding an ablation report."""
  os.makedirs(os.path.join(case_dir, "grid"))
  with open(os.path.join(case_dir, "grid", "ablation.json"), "w") as f:
    f.write('{"runs": []}\n')
  return "grid"


# name -> (tool, arguments, text the line names, setup(case_dir) -> the path the case uses).
# "{path}" in the arguments is replaced by what setup returns.
CASES = {
    "run: missing config file": ("run", ["--config=configs/nope.py"],
                                 "--config: no config file configs/nope.py", None),
    "run: unknown variant": ("run", [f"--config={CONFIG_FILE}:foo"], "--config", None),
    "run: infinite learning rate": ("run", [CONFIG, "--config.learning_rate=inf",
                                            "--workdir=w"], "config.learning_rate", None),
    "run: workdir is a file": ("run", [CONFIG, "--workdir={path}"], "--workdir", _file),
    "run: workdir inside a file": ("run", [CONFIG, "--workdir={path}/sub"], "--workdir", _file),
    "run: workdir not writable": ("run", [CONFIG, "--workdir={path}/new"], "--workdir",
                                  _read_only),
    "resume: workdir not writable": ("run", [CONFIG, "--workdir={path}"], "--workdir",
                                     _read_only),
    "run: a task's field on another task": (
        "run", [f"--config={os.path.join(REPO, 'configs', 'sat.py')}:cpu",
                "--config.graph_nodes=30", "--workdir=w"],
        "config.graph_nodes: task 'sat' does not read it", None),
    "run: zero particles": ("run", [CONFIG, "--workdir=w", "--mode=eval", "--eval_particles=8,0"],
                            "--eval_particles: integers >= 1", None),
    "ablate: negative resampling temperature": (
        "ablate", [CONFIG, "--workdir=w", "--eval_particles=8", "--eval_resample_tau=-1"],
        "--eval_resample_tau: must be > 0", None),
    "solve: no run directory": (
        "solve", ["--workdir=nowhere", "--input=x", "--output=y"], "--workdir", None),
    "plot: missing directory": ("plot", ["nowhere"], "WORKDIR: no directory nowhere", None),
    "plot: workdir is a file": ("plot", ["{path}"], "WORKDIR", _file),
    "plot: workdir not writable": ("plot", ["{path}"], "WORKDIR", _read_only),
    "ablate: workdir is a file": ("ablate", [CONFIG, "--workdir={path}"], "--workdir", _file),
    "ablate: workdir not writable": ("ablate", [CONFIG, "--workdir={path}"], "--workdir",
                                     _read_only),
    "ablate: unknown strategy": ("ablate", [CONFIG, "--workdir=w", "--strategies=none,foo"],
                                 "--strategies", None),
    "ablate: merge a file that is no report": ("ablate", ["--workdir=w", "--merge={path}"],
                                               "--merge", _file),
    "ablate: merge into a report it reads": (
        "ablate", ["--workdir={path}", "--merge={path}/ablation.json"], "--workdir", _report),
    "bench: no steps": ("bench", [CONFIG, "--steps=0"], "--steps", None),
    "bench: steps not a number": ("bench", [CONFIG, "--steps=abc"], "--steps", None),
    "bench: device count not a number": ("bench", [CONFIG, "--device_counts=abc"],
                                         "--device_counts", None),
    "bench: more devices than there are": (
        "bench", [CONFIG, f"--device_counts=1,{jax.device_count() + 3}"], "--device_counts",
        None),
    "bench: negative inner steps": ("bench", [CONFIG, "--inner_steps=-1"], "--inner_steps",
                                    None),
    "bench: empty matmul": ("bench", [CONFIG, "--matmul_size=0"], "--matmul_size", None),
    "bench: negative batch": ("bench", [CONFIG, "--config.batch_size=-4"], "config.batch_size",
                              None),
    "compile: zero particles": ("compile", [CONFIG, "--target=v5e-8", "--particles=8,0"],
                                "--particles: integers >= 1", None),
    "compile: unknown strategy": ("compile", [CONFIG, "--target=v5e-8", "--strategies=none,foo"],
                                  "--strategies: 'foo' is not one of", None),
}


def snapshot(root):
  """{relative path: (is a directory, size, mtime)} of everything under ``root``."""
  entries = {}
  for directory, dirs, names in os.walk(root):
    for name in dirs + names:
      path = os.path.join(directory, name)
      st = os.lstat(path)
      entries[os.path.relpath(path, root)] = (os.path.isdir(path), st.st_size, st.st_mtime_ns)
  return entries


def _run(tool, args, case_dir, read_only=None):
  """The tool run in ``case_dir`` (relative paths land there), the directory ``read_only``
  of it not writable: (result, disk before, after)."""
  module = f"experiments.{tool}"
  command = (["-m", module] if read_only is None
             else ["-c", READ_ONLY, os.path.join(case_dir, read_only), module])
  before = snapshot(case_dir)
  result = subprocess.run([sys.executable, *command, *args], cwd=case_dir,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=300)
  return result, before, snapshot(case_dir)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{case name: (result, disk before, disk after)}, the cases run concurrently."""
  runs = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    for name, (tool, args, _, setup) in CASES.items():
      case_dir = str(tmp_path_factory.mktemp("case"))
      path = setup(case_dir) if setup else ""
      argv = [a.replace("{path}", path) for a in args]
      runs[name] = pool.submit(_run, tool, argv, case_dir,
                               path if setup is _read_only else None)
  return {name: future.result() for name, future in runs.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_command_line_is_one_line_exit_1_and_changes_nothing(results, name):
  result, before, after = results[name]
  assert_refused(result, CASES[name][2])
  assert after == before
