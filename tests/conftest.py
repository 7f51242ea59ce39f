"""Shared fixtures: golden arrays of the PyTorch reference and the model loaded with its weights;
the check of a refused command line."""

import os
import pathlib
import shutil
import tempfile

# One persistent compilation cache for the whole test run, its workers and the tools they start
# (set before jax is imported; pytest-xdist's workers and every subprocess inherit it): the many
# runs of the tiny config compile each program once. The process that made it removes it.
MAKES_CACHE = "IRED_CD_TEST_CACHE" not in os.environ
if MAKES_CACHE:
  os.environ["IRED_CD_TEST_CACHE"] = tempfile.mkdtemp(prefix="ired-cd-tests-jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["IRED_CD_TEST_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_unconfigure(config):
  if MAKES_CACHE:  # the controller (or the only process), after every worker
    shutil.rmtree(os.environ["IRED_CD_TEST_CACHE"], ignore_errors=True)

# The PyTorch reference's arrays, shipped in tests/golden/ (IRED_GOLDEN_DIR: another copy).
GOLDEN = pathlib.Path(os.environ.get("IRED_GOLDEN_DIR",
                                     pathlib.Path(__file__).resolve().parent / "golden"))


def on_ci(environ=os.environ) -> bool:
  """Whether we run under CI (``CI=true``, as CI services set it)."""
  return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def golden(name):
  """The golden arrays ``name`` as a dict of numpy arrays.

  Missing arrays skip the test on a workstation but fail it on CI, where a
  skipped parity test would pass the build without checking parity.
  """
  path = GOLDEN / f"{name}.npz"
  if not path.exists():
    message = f"golden arrays not found at {path} (tests/golden/, or set IRED_GOLDEN_DIR)"
    if on_ci():
      pytest.fail(f"{message}; CI={os.environ['CI']} runs must have them")
    pytest.skip(message)
  return dict(np.load(path))


def assert_refused(result, *named):
  """``result`` (a finished subprocess.run of a tool, text output) is a bad command line
  refused as experiments/cli.py refuses one: exit 1, no traceback, nothing on stdout and one
  line on stderr, starting with ``error: `` and carrying each text of ``named``."""
  assert "Traceback" not in result.stderr, result.stderr
  assert result.returncode == 1, (result.args, result.stderr)
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), (result.args, result.stderr)
  assert all(text in lines[0] for text in named), (result.args, named, lines[0])
  assert result.stdout == "", result.stdout


@pytest.fixture(scope="session")
def golden_params():
  weights = golden("weights")
  params = {}
  for name, value in weights.items():
    layer, leaf = name.split("/")
    params.setdefault(layer, {})[leaf] = jax.numpy.asarray(value)
  return params


@pytest.fixture(scope="session")
def energy_fn():
  from ired_cd.model import EnergyFunction, EnergyMLP
  return EnergyFunction(EnergyMLP(out_dim=400, num_timesteps=10))


@pytest.fixture(scope="session")
def schedule():
  from ired_cd.diffusion import cosine_schedule
  return cosine_schedule(10)
