"""The stable CD preset: the guide's cd_full (q204) with the selected stabilisers.

Identical to ``configs/q204.py`` as shipped (which carries ``base.STABILISERS``);
named on its own so that runs and tables say what they are. The study that
selected the stabilisers, and this preset against the baselines, are in
docs/stabilisers.md.
"""

from configs import base, q204


def get_config(arg=None):
  c = q204.get_config()
  c.experiment_name = "cd_stable"
  c.description = "cd_full with the selected CD stabilisers (base.STABILISERS)"
  c.output_dir = "results/ds_inverse/cd_stable"
  if arg:
    base.apply_variant(c, arg)
  return c
