"""Command-line pieces shared by the tools that take a ``--config`` file."""

import sys

from absl import app

from configs import base
from ired_cd import config as config_lib


def parse_flags(argv):
  """absl's flag parsing (``app.run(main, flags_parser=parse_flags)``), after checking the
  ``--config.<field>`` names: an unknown one exits with one line naming it and the closest."""
  try:
    config_lib.check_overrides(argv[1:], base.get_config())
  except config_lib.ConfigError as err:
    sys.exit(f"error: {err}")
  return app.parse_flags_with_usage(argv)
