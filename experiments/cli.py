"""Command-line pieces shared by the tools that take a ``--config`` file."""

import sys
from typing import List, Optional, Sequence

from absl import app

from configs import base
from ired_cd import schema


def parse_flags(argv):
  """absl's flag parsing (``app.run(main, flags_parser=parse_flags)``), after checking the
  ``--config.<field>`` names: an unknown one exits with one line naming it and the closest."""
  try:
    schema.check_overrides(argv[1:], base.get_config())
  except schema.ConfigError as err:
    sys.exit(f"error: {err}")
  return app.parse_flags_with_usage(argv)


def step_counts(flag_name: str, values: Optional[Sequence[str]]) -> Optional[List[int]]:
  """A list flag of inner-step counts (``--name=0,1,2,5``) as integers >= 0; None if unset.

  Raises ConfigError naming the flag otherwise.
  """
  if values is None:
    return None
  try:
    counts = [int(k) for k in values]
  except ValueError:
    counts = []
  if not counts or min(counts) < 0:
    raise schema.ConfigError(f"--{flag_name}: integers >= 0, got {list(values)}")
  return counts
