"""Command-line pieces shared by the tools: flag parsing and the checks of their common flags.

Every check raises ``schema.ConfigError`` naming the flag (or path) and what is
allowed; the tools turn it into one line on stderr and exit 1, before anything
is compiled or written.
"""

import glob
import importlib.util
import os
import re
import sys
from typing import List, Optional, Sequence

from absl import flags, logging

from configs import base
from ired_cd import evaluation, schema

CONFIG_FLAG = "config"

# The flags define_particle_flags makes belong to the tool that calls it (--helpfull, unloading).
flags.disclaim_key_flags()


def parse_flags(argv):
  """absl's flag parsing (``app.run(main, flags_parser=parse_flags)``) with one line and exit 1
  for a bad flag: a missing ``--config`` file, a config argument (``:variant``) that its
  get_config refuses, an unknown ``--config.<field>`` (named with the closest), absl's own."""
  try:
    if CONFIG_FLAG in flags.FLAGS:
      check_config_file(flag_argument(argv, CONFIG_FLAG))
    schema.check_overrides(argv[1:], base.get_config())
    return flags.FLAGS(argv)
  except (schema.ConfigError, flags.Error) as err:
    sys.exit(f"error: {str(err).splitlines()[0]}")


def start(argv, usage: Optional[str] = None) -> None:
  """A tool's first line in main: library chatter (orbax, XLA) from WARNING on unless
  --verbosity is given; positional arguments refused in one line, exit 1 (``usage``: the
  tool takes exactly one, and this says how)."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if usage is not None:
    if len(argv) != 2:
      sys.exit(f"usage: {usage}")
  elif len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")


def flag_argument(argv, name: str) -> Optional[str]:
  """The value of ``--name`` in ``argv`` (``--name=v``, ``-name=v`` or ``--name v``; the last
  one given wins, as in absl), or None."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    if re.fullmatch(rf"--?{name}", arg) and i + 1 < len(argv):
      value = argv[i + 1]
    elif re.match(rf"--?{name}=", arg):
      value = arg.split("=", 1)[1]
  return value


def check_config_file(value: Optional[str]) -> None:
  """A ``--config`` value (``path[:argument]``): the file exists and its get_config takes the
  argument. ml_collections would report either inside a traceback."""
  if value is None:
    return
  path, colon, argument = value.partition(":")
  if not os.path.isfile(path):
    known = sorted(os.path.relpath(p) for p in glob.glob(
        os.path.join(os.path.dirname(base.__file__), "*.py")) if not p.endswith("__init__.py"))
    raise schema.ConfigError(f"--{CONFIG_FLAG}: no config file {path}; the configs are "
                             f"{', '.join(known)}")
  spec = importlib.util.spec_from_file_location("checked_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    module.get_config(*([argument] if colon else []))
  except (ValueError, TypeError, KeyError) as err:
    raise schema.ConfigError(f"--{CONFIG_FLAG}={value}: {err}") from err


def integers(flag_name: str, values: Optional[Sequence[str]], low: int,
             high: Optional[int] = None, high_is: str = "") -> Optional[List[int]]:
  """A list flag (``--name=1,2,4``) as integers in [low, high]; None if unset.

  Raises ConfigError naming the flag (and ``high_is``, what the bound is) otherwise.
  """
  if values is None:
    return None
  try:
    numbers = [int(k) for k in values]
  except ValueError:
    numbers = []
  if not numbers or min(numbers) < low or (high is not None and max(numbers) > high):
    allowed = f"integers >= {low}" + (f" and <= {high}{high_is}" if high is not None else "")
    raise schema.ConfigError(f"--{flag_name}: {allowed}, got {list(values)}")
  return numbers


def step_counts(flag_name: str, values: Optional[Sequence[str]]) -> Optional[List[int]]:
  """A list flag of inner-step counts (``--name=0,1,2,5``) as integers >= 0; None if unset."""
  return integers(flag_name, values, 0)


def check_at_least(flag: flags.FlagHolder, low: int) -> None:
  """An integer flag's value is >= ``low``; ConfigError naming the flag otherwise."""
  if flag.value < low:
    raise schema.ConfigError(f"--{flag.name}: must be an integer >= {low}, got {flag.value}")


def check_choices(flag: flags.FlagHolder, allowed: Sequence[str]) -> None:
  """Every value of a list flag is one of ``allowed``; ConfigError naming the flag otherwise."""
  for value in flag.value:
    if value not in allowed:
      raise schema.ConfigError(f"--{flag.name}: {value!r} is not one of {tuple(allowed)}")


def check_workdir(name: str, path: str, must_exist: bool = False) -> None:
  """``path`` is a writable directory, or can be made one (``must_exist``: it is one already).

  ``name`` says where the path came from (``--workdir``, ``WORKDIR``). Raises
  ConfigError naming it and the path otherwise: a file, a missing directory, one
  without write permission (which root always has).
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise schema.ConfigError(f"{name}: {path} is a file, not a directory")
  if must_exist and not os.path.isdir(path):
    raise schema.ConfigError(f"{name}: no directory {path}")
  existing = os.path.abspath(path)
  while not os.path.exists(existing):  # the directory that would hold the new one
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise schema.ConfigError(f"{name}: cannot create {path}: {existing} is a file")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise schema.ConfigError(f"{name}: {existing} is not writable"
                             + (f" (it would hold {path})" if existing != os.path.abspath(path)
                                else ""))


def check_resample_tau(flag: flags.FlagHolder) -> None:
  """A resampling temperature flag: unset (independent particles) or > 0."""
  if flag.value is not None and not flag.value > 0:
    raise schema.ConfigError(f"--{flag.name}: must be > 0 (or unset: independent particles), "
                             f"got {flag.value}")


def define_particle_flags(counts_help: str):
  """Defines the particle evaluation's flags (--eval_particles: ``counts_help``,
  --eval_renoise, --eval_resample_tau, --eval_particles_size); returns a function that gives
  the evaluation.Particles they ask for (None without --eval_particles), or raises ConfigError
  naming the flag."""
  counts = flags.DEFINE_list(
      "eval_particles", None, counts_help + ", scored per pick: one particle, the energy's "
      "(lowest E at t = 0), the oracle's.")
  renoise = flags.DEFINE_float("eval_renoise", evaluation.Particles.renoise,
                               "Particles: re-noise between timesteps (0: none).")
  tau = flags.DEFINE_float("eval_resample_tau", None, "Particles: resample them between "
                           "timesteps by softmax(-E / tau) (default: independent).")
  size = flags.DEFINE_integer("eval_particles_size", None, "Particles: on the first N problems "
                              "of each evaluation set (default: all of them).")

  def particles() -> Optional[evaluation.Particles]:
    if counts.value is None:
      return None
    values = integers(counts.name, counts.value, 1)
    if size.value is not None:
      check_at_least(size, 1)
    if renoise.value < 0:
      raise schema.ConfigError(f"--{renoise.name}: must be >= 0, got {renoise.value}")
    check_resample_tau(tau)
    return evaluation.Particles(tuple(values), renoise.value, tau.value, size.value)

  return particles
