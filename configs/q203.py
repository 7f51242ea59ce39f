"""q203_cd_replay: IRED-CD stage 2 (CD + Langevin + timestep-bucketed replay buffer)."""

from configs import base, q202
from ired_cd import schema


def get_config(arg=None):
  c = q202.get_config()
  c.experiment_name = "q203_cd_replay"
  c.description = "IRED-CD Stage 2: CD loss + Langevin + Replay buffer"
  c.ablation_stage = "cd_replay"
  schema.apply_strategy(c, "cd_langevin_replay")
  c.replay_buffer_size = 10_000
  c.replay_buffer_buckets = 16
  c.replay_sample_prob = 0.95
  c.output_dir = "results/ds_inverse/cd_replay"
  c.notes = ("Timestep-bucketed replay buffer (16 buckets). Stores negatives in xₜ space. "
             "p_replay=0.95.")
  if arg:
    base.apply_variant(c, arg)
  return c
