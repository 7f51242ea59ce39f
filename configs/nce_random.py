"""Baseline `nce_random`: the original NCE on random negatives, at the guide's scale."""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.experiment_name = "baseline_nce_random"
  c.ablation_stage = "nce_random"
  c.mining_strategy = "nce_random"
  c.output_dir = "results/ds_inverse/nce_random"
  if arg:
    base.apply_variant(c, arg)
  return c
