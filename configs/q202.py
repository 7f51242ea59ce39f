"""q202_cd_langevin: IRED-CD stage 1 (CD loss + short-run Langevin negatives).

The guide's JSON key for key (the stage switches, use_replay_buffer ...,
from schema.STRATEGY_REGISTRY), plus the CD stabilisers of ``base.STABILISERS``
(a deviation: the literal values run away); ``configs/q202.py:guide`` is the
guide's run exactly. q203 and q204 start from this config.
"""

from configs import base
from ired_cd import schema


def get_config(arg=None):
  c = base.get_config()
  c.experiment_name = "q202_cd_langevin"
  c.description = "IRED-CD Stage 1: CD loss + Langevin sampling"
  c.investigation = "ired-cd"
  c.ablation_stage = "cd_langevin"
  schema.apply_strategy(c, "cd_langevin")
  c.rank = 20
  c.ood = False
  c.diffusion_steps = 10
  c.batch_size = 2048
  c.train_steps = 100_000
  c.learning_rate = 1e-4
  c.mining_opt_steps = 10
  c.mining_noise_scale = 1.5
  c.langevin_sigma_multiplier = 1.0
  c.use_langevin = True
  c.use_cd_loss = True
  c.energy_loss_weight = 0.05
  c.output_dir = "results/ds_inverse/cd_langevin"
  c.notes = ("Corrected CD loss (detach x_neg, not energy_neg). Langevin sigma=sqrt(2*eta). "
             "k=10 steps. No replay buffer yet.")
  base.stabilise(c)  # DEVIATION from the guide (base.STABILISERS); ':guide' undoes it
  if arg:
    base.apply_variant(c, arg)
  return c
