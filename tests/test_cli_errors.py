"""Bad command lines: one line on stderr naming the flag or path, exit 1, no traceback, and
nothing on disk created or changed.

Every case is a real subprocess of the tool; each imports JAX (seconds of CPU), so the
module's fixture starts them all at once and each test reads its case's result.
"""

import concurrent.futures
import os
import subprocess
import sys

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, "configs", "q204.py")
CONFIG = f"--config={CONFIG_FILE}:tiny"
ROOT = os.geteuid() == 0  # root writes through any permission bits


def _file(case_dir):
  with open(os.path.join(case_dir, "afile"), "w") as f:
    f.write("not a directory\n")
  return "afile"


def _read_only(case_dir):
  """A directory holding a run's config.json, without write permission."""
  os.makedirs(os.path.join(case_dir, "ro"))
  with open(os.path.join(case_dir, "ro", "config.json"), "w") as f:
    f.write("{}\n")
  os.chmod(os.path.join(case_dir, "ro"), 0o555)
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
    "compile: unknown strategy": ("compile", [CONFIG, "--target=v5e-8", "--strategies=none,foo"],
                                  "--strategies: 'foo' is not one of", None),
}
NEEDS_A_USER = {name for name, case in CASES.items() if case[3] is _read_only}


def snapshot(root):
  """{relative path: (is a directory, size, mtime)} of everything under ``root``."""
  entries = {}
  for directory, dirs, names in os.walk(root):
    for name in dirs + names:
      path = os.path.join(directory, name)
      st = os.lstat(path)
      entries[os.path.relpath(path, root)] = (os.path.isdir(path), st.st_size, st.st_mtime_ns)
  return entries


def _run(tool, args, case_dir):
  """The tool run in ``case_dir`` (relative paths land there): (result, disk before, after)."""
  before = snapshot(case_dir)
  result = subprocess.run([sys.executable, "-m", f"experiments.{tool}", *args], cwd=case_dir,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=300)
  return result, before, snapshot(case_dir)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{case name: (argv, result, disk before, disk after)}, the cases run concurrently."""
  runs = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    for name, (tool, args, _, setup) in CASES.items():
      if ROOT and name in NEEDS_A_USER:
        continue
      case_dir = str(tmp_path_factory.mktemp("case"))
      path = setup(case_dir) if setup else ""
      argv = [a.replace("{path}", path) for a in args]
      runs[name] = (argv, pool.submit(_run, tool, argv, case_dir))
  yield {name: (argv, *future.result()) for name, (argv, future) in runs.items()}
  for case_dir in tmp_path_factory.getbasetemp().glob("case*"):  # let pytest clean up
    for directory, _, _ in os.walk(case_dir):
      os.chmod(directory, 0o755)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_command_line_is_one_line_exit_1_and_changes_nothing(results, name):
  if ROOT and name in NEEDS_A_USER:
    pytest.skip("run as root: a directory without write permission is still writable")
  argv, result, before, after = results[name]
  named = CASES[name][2]
  lines = result.stderr.splitlines()
  assert "Traceback" not in result.stderr, result.stderr
  assert result.returncode == 1, (argv, result.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], (
      argv, result.stderr)
  assert result.stdout == ""
  assert after == before
