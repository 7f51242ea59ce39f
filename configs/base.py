"""Every setting of ired-cd with its default.

Field names are the guide's JSON keys (``mining_opt_steps``, ``batch_size``,
``rank``, ...), so ``--config.<key>=...`` overrides read like the guide's
configs. Experiment configs (q202/q203/q204, baselines) start from
``get_config()`` and change what their JSON changes.

Config-file argument: ``--config=configs/q204.py:cpu`` applies ``cpu_variant``
(the laptop protocol: minutes on 2 CPU cores), ``:cpu20k`` the same protocol
10x longer, ``:tiny`` a seconds-long smoke run, ``:guide`` the guide's literal
CD values; join them with ',' (``:cpu,guide``).
"""

import ml_collections
from ml_collections import config_dict

from ired_cd import schema


def get_config(arg=None):
  c = ml_collections.ConfigDict()

  # Bookkeeping, carried from the guide's JSON so the configs match it key for key:
  # nothing reads these, and they never make two runs differ (loop.BOOKKEEPING_FIELDS).
  c.experiment_name = "ired"
  c.description = ""
  c.investigation = "ired-cd"
  c.ablation_stage = ""
  c.notes = ""
  c.output_dir = "results/ired"

  # Task: inverse | addition | lowrank (rank x rank matrices) | sat | colouring
  # (ired_cd/tasks/). A task reads its own fields only; another task's must stay as here.
  c.task = "inverse"
  c.ood = False  # train on the harder distribution (the original --ood flag)
  c.rank = 20  # inverse, addition, lowrank
  # sat: random 3-SAT on sat_variables; training and in-distribution formulas have
  # sat_clauses = (lo, hi) clauses, the harder set sat_clauses_ood (91: SATLIB uf20-91's);
  # a dataset of sat_train_instances satisfiable formulas, sat_solutions of each one's
  # satisfying assignments kept (drawn uniformly), built once per seed in the workdir.
  c.sat_variables = 20
  c.sat_clauses = (60, 80)
  c.sat_clauses_ood = 91
  c.sat_train_instances = 20_000
  c.sat_solutions = 32
  # colouring: planted graph_colours-colourable graphs on graph_nodes nodes, average degree
  # graph_degree (harder: graph_degree_ood; the 3-colouring threshold is near 4.69).
  c.graph_nodes = 20
  c.graph_colours = 3
  c.graph_degree = 3.0
  c.graph_degree_ood = 4.5

  # Energy model and diffusion. mlp: IRED's EBM over the whole problem (model.EnergyMLP);
  # clauses: one learned energy per clause, summed (3-SAT only; composed.ClauseEnergy); edges:
  # one per edge (colouring only; composed.EdgeEnergy). A composed energy's parameters do not
  # depend on the instance's size.
  c.energy_model = "mlp"
  c.hidden_dim = 512
  c.time_embedding_dim = 128
  c.diffusion_steps = 10
  # float32 | bfloat16: the dtype of every matmul's operands (accumulation and
  # all other arithmetic stay float32). float32 compares with the PyTorch runs;
  # bfloat16 trains faster where the hardware multiplies bf16 natively, with the
  # same curves (docs/speed.md).
  c.matmul_dtype = "float32"
  # auto | gram | plain: how a score differentiates the last layer |h W + b|^2 (same
  # energy, different graph): through W W^T (gram), through W (plain), or gram
  # where it needs fewer multiply-adds (auto: model.uses_gram, docs/speed.md).
  c.last_layer = "auto"

  # Optimisation: clip_by_global_norm then Adam; EMA with ema-pytorch semantics.
  c.seed = 0
  c.batch_size = 2048
  c.train_steps = 100_000
  c.learning_rate = 1e-4
  c.learning_rate_schedule = "constant"  # constant | cosine (to 0 at learning_rate_decay_steps)
  c.learning_rate_decay_steps = 100_000
  c.adam_b1 = 0.9
  c.adam_b2 = 0.99
  c.grad_clip_norm = 1.0
  c.ema_decay = 0.995
  c.ema_update_every = 10
  c.ema_update_after_step = 100
  c.ema_power = 2.0 / 3.0
  # > 0: also denoise at the sampler's own noise-free states sqrt(abar_t) x0_hat (x0_hat:
  # the model's answer from x_t), towards the noise that leads to the truth, with this
  # weight beside the denoising MSE (strategies.sampler_state_loss; every strategy; off).
  c.sampler_state_weight = 0.0

  # Energy-landscape supervision: none | nce_random | ired | cd_langevin |
  # cd_langevin_replay | cd_full (schema.STRATEGY_REGISTRY). A switch the strategy
  # does not read must stay off (schema.CD_SWITCHES, ENERGY_SWITCHES, DESCENT_SWITCHES).
  c.mining_strategy = "ired"
  # ired / nce_random (the original's NCE): negatives from q_sample(x0, t, 3 eps),
  # ired_descent_steps energy-descent steps on them (ired only: nce_random takes
  # none), softplus loss weighted 0.5.
  c.ired_noise_scale = 3.0
  c.ired_descent_steps = 2
  # per_sample: the descent clamps each negative to its own box 2 sqrt(abar_t) |
  # first_sample: to sample 0's box, for the whole batch (the original's quirk).
  c.ired_descent_clamp = "per_sample"
  c.nce_loss_weight = 0.5
  # CD (guide sections A-F).
  # The guide's switches for the chain and the CD loss: kept so the config files
  # match the guide key for key; nothing reads them and only True is accepted.
  c.use_langevin = True
  c.use_cd_loss = True
  c.mining_opt_steps = 10
  c.mining_noise_scale = 1.5
  c.langevin_sigma_multiplier = 1.0
  c.langevin_grad_clip = 0.0  # > 0: clip each sample's score norm (stabiliser; off)
  c.energy_reg_weight = 0.0  # alpha (E_pos^2 + E_neg^2), Du & Mordatch 2019 (off)
  c.energy_loss_weight = 0.05
  # Stabilisers of the CD term (the guide's literal values here; see
  # configs/cd_stable.py and the README's stabiliser study).
  c.cd_loss = "linear"  # linear: E_pos - E_neg (guide) | logistic: softplus(E_pos - E_neg)
  c.cd_margin = 0.0  # logistic only: softplus(E_pos - E_neg + cd_margin), a gap it keeps asking for
  # chain: the chain's x_t (guide) | renoised: its zero-noise answer at the positive's
  # noise | denoised: the model's denoised answer from it, at the positive's noise.
  c.cd_negatives = "chain"
  # CD strategies: split the gradient into its denoising and energy parts (one
  # backward pass) and project: drop the energy part's component against the
  # denoising gradient, and/or cap its norm. log_grad_conflict logs both norms
  # and their cosine for every strategy with an energy term.
  c.energy_grad_surgery = "none"
  c.energy_grad_max_ratio = 0.0  # > 0: cap ||g_energy|| at this times ||g_denoise||
  c.log_grad_conflict = False
  c.use_replay_buffer = False
  c.replay_buffer_size = 10_000  # per bucket
  c.replay_buffer_buckets = 16
  c.replay_sample_prob = 0.95
  c.replay_mixing = "sample"  # sample: per-sample replay-or-fresh | batch: the guide's all-or-nothing
  c.replay_store_condition = False  # replayed negatives keep their own input A
  c.use_residual_filter = False
  c.residual_filter_quantile = 0.3
  c.residual_tau = config_dict.placeholder(float)  # fixed threshold; None: batch quantile
  c.use_energy_schedule = False
  c.energy_loss_warmup_steps = 20_000
  c.energy_loss_max_weight = 0.05
  c.use_timestep_range = False
  c.energy_loss_timestep_range = (0.2, 0.8)

  # Evaluation: EMA params, fixed seeded sets (in-distribution and harder).
  c.eval_every = 5_000
  c.eval_size = 1024
  c.eval_seed = 1234
  c.eval_inner_steps = (5,)
  c.eval_chunk = 1024
  c.eval_return_x0 = False

  # Logging and checkpoints.
  c.log_every = 100
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  # Training health: warn once when ||dE/dy||, having reached sqrt(D) / 2, collapses
  # while the MSE sits near 1, from this step on (loop.collapse_check).
  c.collapse_after_steps = 1_000

  if arg:
    apply_variant(c, arg)
  return c


def baseline(strategy, arg=None):
  """A baseline at the guide's scale: base settings with ``strategy`` (schema.apply_strategy)."""
  c = schema.apply_strategy(get_config(), strategy)
  c.experiment_name = f"baseline_{strategy}"
  c.ablation_stage = strategy
  c.output_dir = f"results/ds_inverse/{strategy}"
  if arg:
    apply_variant(c, arg)
  return c


# DEVIATION FROM THE GUIDE. Read literally, every CD stage of the guide runs
# away (E_neg - E_pos grows without bound until the step is non-finite; the
# PyTorch reference too). q202/q203/q204 therefore carry these stabilisers,
# chosen by the study in docs/stabilisers.md; ``--config=configs/q204.py:guide``
# (or ``:cpu,guide``) restores the guide's literal values.
STABILISERS = dict(
    cd_loss="logistic",
    cd_negatives="denoised",
    energy_grad_surgery="project",
)


def stabilise(c):
  """Turns on the selected CD stabilisers (a deviation from the guide, see STABILISERS)."""
  c.update(STABILISERS)


def guide_variant(c):
  """The guide's literal CD values: every stabiliser back to its default (off)."""
  defaults = get_config()
  c.update({key: defaults[key] for key in STABILISERS})


def cpu_variant(c, train_steps=2_000, eval_every=500, suffix="_cpu"):
  """The laptop protocol: batch 256, 2,000 steps, lr 1e-3 cosine-decayed to 0, bfloat16.

  Every strategy runs on these equal terms. The guide's lr 1e-4 needs ~8,000
  steps at batch 256 before `none` beats the mean predictor; 1e-3 with the
  cosine decay gets there by step 1,000 and by step 2,000 comes within 4 %
  of what 1e-4 reaches at 8,000 (docs/stabilisers.md has the evidence). cd_full's
  energy warm-up keeps the guide's proportion: 20 % of the run (20k of 100k).
  The learning-rate decay and the warm-up follow ``train_steps`` here, in the
  variant; a ``--config.train_steps`` override does not move them (so a resumed
  run keeps its trajectory): for a longer protocol use ``cpu20k``.
  """
  c.batch_size = 256
  c.train_steps = train_steps
  c.energy_loss_warmup_steps = train_steps // 5
  c.learning_rate = 1e-3
  c.learning_rate_schedule = "cosine"
  c.learning_rate_decay_steps = train_steps
  c.matmul_dtype = "bfloat16"
  c.eval_every = eval_every
  c.eval_size = 1024
  c.log_every = 50
  c.checkpoint_every = eval_every
  c.collapse_after_steps = 500
  c.output_dir = c.output_dir + suffix


def cpu20k_variant(c):
  """The laptop protocol run 10x longer (20,000 steps, warm-up 4,000, evaluation every
  2,000): the comparison once every strategy has converged."""
  cpu_variant(c, train_steps=20_000, eval_every=2_000, suffix="_cpu20k")


# The tiny variant's problem sizes, per task (the fields that task reads).
TINY_TASKS = dict(
    inverse=dict(rank=4), addition=dict(rank=4), lowrank=dict(rank=4),
    sat=dict(sat_variables=8, sat_clauses=(20, 26), sat_clauses_ood=34, sat_train_instances=128,
             sat_solutions=8),
    colouring=dict(graph_nodes=8))


def tiny_variant(c):
  """Seconds-long smoke run (tests, quick checks): small problems of the config's task
  (TINY_TASKS: matrices of rank 4, 3-SAT on 8 variables, graphs of 8 nodes), batch 32,
  hidden 64."""
  c.update(TINY_TASKS[c.task])
  c.hidden_dim = 64
  c.time_embedding_dim = 16
  c.batch_size = 32
  c.train_steps = 40
  c.eval_every = 20
  c.eval_size = 64
  c.eval_chunk = 64
  c.log_every = 10
  c.checkpoint_every = 20
  c.collapse_after_steps = 20
  c.replay_buffer_size = 64
  c.energy_loss_warmup_steps = min(c.energy_loss_warmup_steps, 20)
  c.output_dir = c.output_dir + "_tiny"


def run_config(config, strategy=None, **overrides):
  """A validated copy of ``config`` with ``strategy`` (schema.apply_strategy: its stage's
  switches set, those it ignores off) and ``overrides``: how the ablation, the benchmarks
  and the tests derive a run's config."""
  c = config.copy_and_resolve_references()
  if strategy is not None:
    schema.apply_strategy(c, strategy)
  c.update(overrides)
  return schema.validate(c, get_config())


def clauses_variant(c):
  """The composed per-clause energy (3-SAT): energy_model clauses, hidden 64."""
  c.energy_model = "clauses"
  c.hidden_dim = 64


def edges_variant(c):
  """The composed per-edge energy (colouring): energy_model edges, hidden 64."""
  c.energy_model = "edges"
  c.hidden_dim = 64


VARIANTS = {"cpu": cpu_variant, "cpu20k": cpu20k_variant, "tiny": tiny_variant,
            "guide": guide_variant, "clauses": clauses_variant, "edges": edges_variant}


def apply_variant(c, arg):
  """Applies the comma-separated variants of ``arg`` in order, e.g. ``cpu,guide``."""
  for name in arg.split(","):
    if name not in VARIANTS:
      raise ValueError(f"config argument must be one or more of {sorted(VARIANTS)} joined by "
                       f"',', got {arg!r}")
    VARIANTS[name](c)
