"""Config validation and the shipped configs (q202/q203/q204 = the guide's JSON)."""

import importlib
import json
import pathlib
import shutil

import pytest

from configs import base
from ired_cd import loop, schema
from ired_cd.schema import ConfigError

SHIPPED = ("q202", "q203", "q204", "cd_stable", "none", "nce_random", "ired")


def _validate(c):
  return schema.validate(c, defaults=base.get_config())


def _config(name="q204"):
  return importlib.import_module(f"configs.{name}").get_config()


def _set(**fields):
  def edit(c):
    for k, v in fields.items():
      c[k] = v
  return edit


def _add_key(c):
  c.mining_steps = 10  # a typo of mining_opt_steps


# (name, config, edit, regex the message must match: field and allowed values)
BAD = [
    ("unknown_strategy", "q204", _set(mining_strategy="cd_magic"),
     r"mining_strategy.*none.*nce_random.*ired.*cd_langevin.*cd_full.*'cd_magic'"),
    ("unknown_key", "q204", _add_key, r"config\.mining_steps: unknown key.*mining_opt_steps"),
    ("quantile_above_1", "q204", _set(residual_filter_quantile=1.5),
     r"residual_filter_quantile: must lie in \[0, 1\], got 1\.5"),
    ("quantile_below_0", "q204", _set(residual_filter_quantile=-0.1),
     r"residual_filter_quantile: must lie in \[0, 1\]"),
    ("empty_timestep_range", "q204", _set(energy_loss_timestep_range=(0.8, 0.2)),
     r"energy_loss_timestep_range: .*lo <= hi.*\(0\.8, 0\.2\)"),
    ("timestep_range_above_1", "q204", _set(energy_loss_timestep_range=(0.2, 1.5)),
     r"energy_loss_timestep_range: must be \(lo, hi\) with 0 <= lo <= hi <= 1"),
    ("zero_batch_size", "q202", _set(batch_size=0),
     r"batch_size: must be a positive integer, got 0"),
    ("negative_batch_size", "q202", _set(batch_size=-8), r"batch_size: must be a positive integer"),
    ("zero_rank", "q202", _set(rank=0), r"config\.rank: must be a positive integer, got 0"),
    ("negative_train_steps", "none", _set(train_steps=-1),
     r"train_steps: must be a positive integer, got -1"),
    ("bad_replay_mixing", "q203", _set(replay_mixing="bucket"),
     r"replay_mixing: must be one of \('sample', 'batch'\), got 'bucket'"),
    ("no_langevin_on_cd", "q202", _set(use_langevin=False),
     r"use_langevin: must be True for cd_langevin.*nce_random"),
    ("no_cd_loss_on_cd", "q204", _set(use_cd_loss=False), r"use_cd_loss: must be True for cd_full"),
    ("unknown_task", "ired", _set(task="sudoku"),
     r"task: must be one of \('inverse', 'addition', 'lowrank', 'sat', 'colouring'\), got "
     r"'sudoku'"),
    ("another_tasks_field", "q204", _set(task="sat", rank=10),
     r"config\.rank: task 'sat' does not read it \(only inverse does\): must be 20 for sat, "
     r"got 10"),
    ("sat_field_on_inverse", "q204", _set(sat_variables=30),
     r"config\.sat_variables: task 'inverse' does not read it \(only sat does\)"),
    ("bad_clause_range", "q204", _set(task="sat", sat_clauses=(80, 60)),
     r"config\.sat_clauses: must be \(lo, hi\), positive integers with lo <= hi, got \(80, 60\)"),
    ("too_many_variables", "q204", _set(task="sat", sat_variables=200),
     r"config\.sat_variables: at most 127"),
    ("degree_beyond_planted", "q204", _set(task="colouring", graph_degree_ood=13.0),
     r"config\.graph_degree_ood: must lie in \(0, 12.6667\]"),
    ("tau_on_a_verifier", "q204", _set(task="colouring", residual_tau=0.2),
     r"config\.residual_tau: task 'colouring' filters by its verifier"),
    ("zero_chain_steps_on_cd", "q202", _set(mining_opt_steps=0),
     r"mining_opt_steps: must be >= 1 for cd_langevin"),
    ("bad_matmul_dtype", "q204", _set(matmul_dtype="float16"),
     r"matmul_dtype: must be one of \('float32', 'bfloat16'\), got 'float16'"),
    ("replay_prob_above_1", "q203", _set(replay_sample_prob=1.2),
     r"replay_sample_prob: must lie in \[0, 1\]"),
    ("bad_last_layer", "q204", _set(last_layer="fast"),
     r"last_layer: must be one of \('auto', 'gram', 'plain'\), got 'fast'"),
    # A switch the strategy would ignore (schema.CD_SWITCHES, ENERGY_SWITCHES, DESCENT_SWITCHES).
    ("filter_on_ired", "ired", _set(use_residual_filter=True),
     r"^config\.use_residual_filter: mining_strategy='ired' does not read it \(only the CD "
     r"strategies do\): must be False for ired, got True$"),
    ("replay_on_nce_random", "nce_random", _set(use_replay_buffer=True),
     r"use_replay_buffer: mining_strategy='nce_random' does not read it.*must be False"),
    ("logistic_on_none", "none", _set(cd_loss="logistic"),
     r"cd_loss: mining_strategy='none' does not read it.*must be 'linear' for none"),
    ("regulariser_on_none", "none", _set(energy_reg_weight=0.1),
     r"energy_reg_weight: mining_strategy='none' does not read it \(only the strategies with "
     r"an energy term do\): must be 0\.0 for none, got 0\.1"),
    ("bad_descent_clamp", "ired", _set(ired_descent_clamp="batch"),
     r"ired_descent_clamp: must be one of \('per_sample', 'first_sample'\), got 'batch'"),
    ("original_clamp_on_nce_random", "nce_random", _set(ired_descent_clamp="first_sample"),
     r"ired_descent_clamp: mining_strategy='nce_random' does not read it \(only the strategies "
     r"with training descent do\): must be 'per_sample' for nce_random"),
]


@pytest.mark.parametrize("name,config,edit,message", BAD, ids=[b[0] for b in BAD])
def test_validate_rejects(name, config, edit, message):
  """Each bad field raises ConfigError naming the field and what it may be."""
  del name
  c = _config(config)
  _validate(c)  # valid before the edit
  edit(c)
  with pytest.raises(ConfigError, match=message):
    _validate(c)


def test_config_errors_reach_value_error_handlers():
  """A bad config raised by validate or apply_strategy is caught by ``except ValueError`` (what
  generic callers guard with), as a ConfigError with its message intact."""
  c = _config("q202")
  c.batch_size = 0
  cases = [(lambda: _validate(c), "config.batch_size: must be a positive integer, got 0"),
           (lambda: schema.apply_strategy(base.get_config(), "adversarial"),
            "mining_strategy must be one of")]
  for bad, message in cases:
    try:
      bad()
    except ValueError as err:
      assert type(err) is ConfigError and str(err).startswith(message), err
    else:
      raise AssertionError(f"no error raised; expected {message!r}")


def test_rules_apply_only_where_they_matter():
  """The filter quantile is not checked when a fixed tau is set, nor the filter's oracle
  without the filter."""
  c = _config("q204")
  c.residual_filter_quantile = 1.5
  c.residual_tau = 0.5
  _validate(c)
  c = _config("q204")
  c.task, c.use_residual_filter = "lowrank", False
  _validate(c)
  c = _config("q204")
  c.residual_tau = -1.0
  with pytest.raises(ConfigError, match=r"residual_tau: must be >= 0"):
    _validate(c)


@pytest.mark.parametrize("arg", [None, "cpu", "cpu20k", "tiny"])
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name, arg):
  """Every shipped config validates, plain and with the cpu / cpu20k / tiny variants."""
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  assert _validate(c) is c
  stage = schema.STRATEGY_REGISTRY[c.mining_strategy].stage
  assert {k: c[k] for k in stage} == stage  # the configs take the stage from the registry
  if arg == "tiny":
    assert c.rank == 4 and c.batch_size == 32
  elif arg in ("cpu", "cpu20k"):
    assert c.train_steps == {"cpu": 2_000, "cpu20k": 20_000}[arg]
    assert c.batch_size == 256 and c.energy_loss_warmup_steps == c.train_steps // 5
    assert c.learning_rate_decay_steps == c.train_steps  # the cosine ends with the run
    assert c.matmul_dtype == "bfloat16" and c.eval_size == 1024


def test_unknown_variant_raises():
  with pytest.raises(ValueError, match=r"cpu.*tiny"):
    base.get_config("huge")


def test_apply_strategy_sets_stage_switches():
  """From a config with every switch on, apply_strategy sets the stage's switches, turns off
  those the strategy ignores and keeps those it reads, and the result validates."""
  on = dict(use_replay_buffer=True, use_residual_filter=True, use_energy_schedule=True,
            use_timestep_range=True, replay_store_condition=True, langevin_grad_clip=1.0,
            cd_loss="logistic", cd_margin=1.0, cd_negatives="denoised",
            energy_grad_surgery="project", energy_grad_max_ratio=2.0, energy_reg_weight=0.1,
            log_grad_conflict=True, ired_descent_clamp="first_sample")
  assert set(on) == (set(schema.CD_SWITCHES) | set(schema.ENERGY_SWITCHES)
                     | set(schema.DESCENT_SWITCHES))
  off = dict(use_replay_buffer=False, use_residual_filter=False, use_energy_schedule=False,
             use_timestep_range=False, replay_store_condition=False, langevin_grad_clip=0.0,
             cd_loss="linear", cd_margin=0.0, cd_negatives="chain", energy_grad_surgery="none",
             energy_grad_max_ratio=0.0, energy_reg_weight=0.0, log_grad_conflict=False,
             ired_descent_clamp="per_sample")
  energy = {"energy_reg_weight", "log_grad_conflict"}
  cd = energy | {"replay_store_condition", "langevin_grad_clip", "cd_loss", "cd_margin",
                 "cd_negatives", "energy_grad_surgery", "energy_grad_max_ratio"}
  kept_on = {"none": set(), "nce_random": energy, "ired": energy | {"ired_descent_clamp"},
             "cd_langevin": cd, "cd_langevin_replay": cd | {"use_replay_buffer"},
             "cd_full": cd | {"use_replay_buffer", "use_residual_filter", "use_energy_schedule",
                              "use_timestep_range"}}
  for strategy in schema.STRATEGY_REGISTRY:
    c = base.get_config("tiny")
    c.update(on)
    schema.apply_strategy(c, strategy)
    _validate(c)
    assert c.mining_strategy == strategy
    assert {field: c[field] for field in on} == {
        field: on[field] if field in kept_on[strategy] else off[field] for field in on}, strategy


# The guide's JSON files, verbatim (ired-cd-guide.md, "Updated Config Files").
GUIDE_JSON = {
    "q202": r"""{
  "experiment_name": "q202_cd_langevin",
  "description": "IRED-CD Stage 1: CD loss + Langevin sampling",
  "investigation": "ired-cd",
  "ablation_stage": "cd_langevin",
  "mining_strategy": "cd_langevin",
  "rank": 20,
  "ood": false,
  "diffusion_steps": 10,
  "batch_size": 2048,
  "train_steps": 100000,
  "learning_rate": 0.0001,
  "mining_opt_steps": 10,
  "mining_noise_scale": 1.5,
  "langevin_sigma_multiplier": 1.0,
  "use_langevin": true,
  "use_replay_buffer": false,
  "use_cd_loss": true,
  "use_residual_filter": false,
  "use_energy_schedule": false,
  "energy_loss_weight": 0.05,
  "output_dir": "results/ds_inverse/cd_langevin",
  "notes": "Corrected CD loss (detach x_neg, not energy_neg). Langevin sigma=sqrt(2*eta). k=10 steps. No replay buffer yet."
}""",
    "q203": r"""{
  "experiment_name": "q203_cd_replay",
  "description": "IRED-CD Stage 2: CD loss + Langevin + Replay buffer",
  "investigation": "ired-cd",
  "ablation_stage": "cd_replay",
  "mining_strategy": "cd_langevin_replay",
  "rank": 20,
  "ood": false,
  "diffusion_steps": 10,
  "batch_size": 2048,
  "train_steps": 100000,
  "learning_rate": 0.0001,
  "mining_opt_steps": 10,
  "mining_noise_scale": 1.5,
  "langevin_sigma_multiplier": 1.0,
  "use_langevin": true,
  "use_replay_buffer": true,
  "replay_buffer_size": 10000,
  "replay_buffer_buckets": 16,
  "replay_sample_prob": 0.95,
  "use_cd_loss": true,
  "use_residual_filter": false,
  "use_energy_schedule": false,
  "energy_loss_weight": 0.05,
  "output_dir": "results/ds_inverse/cd_replay",
  "notes": "Timestep-bucketed replay buffer (16 buckets). Stores negatives in xₜ space. p_replay=0.95."
}""",
    "q204": r"""{
  "experiment_name": "q204_cd_full",
  "description": "IRED-CD Stage 3: Full implementation (CD + Langevin + Replay + Residual filter + Schedule)",
  "investigation": "ired-cd",
  "ablation_stage": "cd_full",
  "mining_strategy": "cd_full",
  "rank": 20,
  "ood": false,
  "diffusion_steps": 10,
  "batch_size": 2048,
  "train_steps": 100000,
  "learning_rate": 0.0001,
  "mining_opt_steps": 10,
  "mining_noise_scale": 1.5,
  "langevin_sigma_multiplier": 1.0,
  "use_langevin": true,
  "use_replay_buffer": true,
  "replay_buffer_size": 10000,
  "replay_buffer_buckets": 16,
  "replay_sample_prob": 0.95,
  "use_cd_loss": true,
  "use_residual_filter": true,
  "residual_filter_quantile": 0.3,
  "use_energy_schedule": true,
  "use_timestep_range": true,
  "energy_loss_warmup_steps": 20000,
  "energy_loss_max_weight": 0.05,
  "energy_loss_timestep_range": [0.2, 0.8],
  "output_dir": "results/ds_inverse/cd_full",
  "notes": "Full IRED-CD. Residual filtering (30th percentile) prevents false negatives. Energy schedule (warmup 20K steps, max_weight=0.05). Timestep range filtering [0.2T, 0.8T]."
}""",
}


def _as_json_value(value):
  return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", ["q202", "q203", "q204"])
def test_configs_reproduce_guide_json(name):
  """Every key of the guide's JSON exists in our config with the same value and type."""
  want = json.loads(GUIDE_JSON[name])
  c = _config(name)
  missing = sorted(set(want) - set(c.keys()))
  assert not missing, missing
  for key, value in want.items():
    got = _as_json_value(c[key])
    assert got == value, (key, got, value)
    assert type(got) is type(value), (key, type(got), type(value))


def test_guide_json_omissions_keep_defaults():
  """Keys the guide's q202/q203 JSON leave out keep the stage semantics (no filter, no schedule)."""
  c = _config("q203")
  assert not c.use_timestep_range and not c.use_residual_filter and not c.use_energy_schedule
  assert c.replay_mixing == "sample" and c.residual_tau is None
  assert not _config("q202").use_timestep_range


@pytest.mark.parametrize("name", ["q202", "q203", "q204", "cd_stable"])
def test_cd_stages_carry_the_stabilisers_and_guide_undoes_them(name):
  """q202-q204 deviate from the guide by base.STABILISERS (and only there: the guide's keys
  keep their values, test_configs_reproduce_guide_json); ':guide' restores the literal run."""
  module = importlib.import_module(f"configs.{name}")
  stable, literal = module.get_config(), module.get_config("guide")
  defaults = base.get_config()
  assert base.STABILISERS and all(defaults[k] != v for k, v in base.STABILISERS.items())
  assert {k: stable[k] for k in base.STABILISERS} == base.STABILISERS
  assert {k: literal[k] for k in base.STABILISERS} == {k: defaults[k] for k in base.STABILISERS}
  differ = {k for k in stable.keys() if stable[k] != literal[k]}
  assert differ == set(base.STABILISERS)


def test_variants_combine_in_order():
  """'cpu,guide' is the laptop protocol with the guide's literal CD values."""
  c = importlib.import_module("configs.q204").get_config("cpu,guide")
  assert (c.batch_size, c.learning_rate, c.learning_rate_schedule) == (256, 1e-3, "cosine")
  assert c.learning_rate_decay_steps == c.train_steps
  assert (c.cd_loss, c.cd_negatives, c.energy_grad_surgery) == ("linear", "chain", "none")
  with pytest.raises(ValueError, match=r"'cpu,huge'"):
    base.get_config("cpu,huge")


# config.json files written by commit 3321ceb: ablate_<strategy> by the ablation from
# configs/q204.py:tiny (the baselines with the CD switches on, which that code ignored),
# configs_<strategy> from configs/<strategy>.py:tiny. None has last_layer.
OLD_RUNS = pathlib.Path(__file__).parent / "fixtures" / "config_3321ceb"


def _todays_config(name):
  """The config that the run saved as ``name`` is given by today's code."""
  source, strategy = name.split("_", 1)
  if source == "ablate":
    return base.run_config(importlib.import_module("configs.q204").get_config("tiny"), strategy)
  return base.run_config(importlib.import_module(f"configs.{strategy}").get_config("tiny"))


@pytest.mark.parametrize("name", sorted(p.name for p in OLD_RUNS.iterdir()))
def test_runs_saved_by_older_code_still_resume(name, tmp_path):
  """An old config.json reads as today's config of the same run (schema.from_saved): the
  ablation finds the run finished, a resume accepts its workdir, and the loaded config
  validates and equals today's."""
  saved = json.loads((OLD_RUNS / name / "config.json").read_text())
  assert "last_layer" not in saved
  config = _todays_config(name)
  shutil.copy(OLD_RUNS / name / "config.json", tmp_path / "config.json")
  (tmp_path / "summary.json").write_text(
      json.dumps({"status": "completed", "steps": config.train_steps}))
  assert loop.holds_outcome(config, str(tmp_path))
  loop.check_workdir(config, str(tmp_path))
  loaded = _validate(schema.load_config(str(tmp_path)))
  assert loaded.to_dict() == config.to_dict()
  config.seed = 1  # a field that changes the run still tells them apart
  assert not loop.holds_outcome(config, str(tmp_path))
