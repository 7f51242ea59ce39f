"""Baseline `ired`: the paper (2 energy-descent steps + NCE) at the guide's scale."""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.experiment_name = "baseline_ired"
  c.ablation_stage = "ired"
  c.mining_strategy = "ired"
  c.output_dir = "results/ds_inverse/ired"
  if arg:
    base.apply_variant(c, arg)
  return c
