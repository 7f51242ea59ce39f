"""q204_cd_full: IRED-CD stage 3 (CD + Langevin + replay + residual filter + schedule)."""

from configs import base, q203
from ired_cd import schema


def get_config(arg=None):
  c = q203.get_config()
  c.experiment_name = "q204_cd_full"
  c.description = ("IRED-CD Stage 3: Full implementation (CD + Langevin + Replay + "
                   "Residual filter + Schedule)")
  c.ablation_stage = "cd_full"
  schema.apply_strategy(c, "cd_full")
  c.residual_filter_quantile = 0.3
  c.energy_loss_warmup_steps = 20_000
  c.energy_loss_max_weight = 0.05
  c.energy_loss_timestep_range = (0.2, 0.8)
  c.output_dir = "results/ds_inverse/cd_full"
  c.notes = ("Full IRED-CD. Residual filtering (30th percentile) prevents false negatives. "
             "Energy schedule (warmup 20K steps, max_weight=0.05). Timestep range filtering "
             "[0.2T, 0.8T].")
  if arg:
    base.apply_variant(c, arg)
  return c
