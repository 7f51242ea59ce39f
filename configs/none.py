"""Baseline `none`: denoising MSE only, no negatives, at the guide's scale."""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.experiment_name = "baseline_none"
  c.ablation_stage = "none"
  c.mining_strategy = "none"
  c.output_dir = "results/ds_inverse/none"
  if arg:
    base.apply_variant(c, arg)
  return c
