"""The strategy ablation (ired_cd.ablation, experiments.ablate) and the per-run plots
(experiments.plot) end to end."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from configs import base, q204
from ired_cd import ablation, landscape, loop, metrics_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STRATEGIES = ["none", "cd_full"]
SHORT = dict(train_steps=20, eval_every=10, log_every=10, checkpoint_every=10)
COLUMNS = ["strategy", "seeds", "MSE in-dist", "÷ baseline", "MSE harder", "÷ baseline",
           "final ‖∇E‖", "final energy gap", "steps/s", "flags"]


def tiny(**overrides):
  return base.run_config(q204.get_config("tiny"), **dict(SHORT, **overrides))


def assert_png(path):
  assert os.path.getsize(path) > 1000, path
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE, path


def table(workdir):
  """(header, {first cell: cells}) of the markdown table in WORKDIR/ablation.md."""
  with open(os.path.join(workdir, "ablation.md")) as f:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in f if line.startswith("|")]
  assert set(rows[1]) == {"---"}
  return rows[0], {cells[0].strip("`"): cells for cells in rows[2:]}


def summary(workdir, strategy, seed):
  with open(os.path.join(workdir, strategy, f"seed{seed}", "summary.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """A persistent compilation cache for this module: the seeds of a strategy compile once.

  Returns the environment that gives a subprocess the same cache; the previous
  settings are restored afterwards.
  """
  saved = {name: getattr(jax.config, name) for name in CACHE_SETTINGS}
  path = str(tmp_path_factory.mktemp("jax_cache"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  compilation_cache.reset_cache()
  yield dict(os.environ, JAX_COMPILATION_CACHE_DIR=path,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ablation"))
  return workdir, ablation.run_ablation(tiny(), STRATEGIES, 2, workdir)


def test_each_run_completes_in_its_own_workdir(grid):
  workdir, report = grid
  for strategy in STRATEGIES:
    for seed in (0, 1):
      s = summary(workdir, strategy, seed)
      assert (s["status"], s["steps"], s["seed"], s["mining_strategy"]) == (
          "completed", 20, seed, strategy)
  assert [(r["strategy"], r["seed"], r["skipped"]) for r in report["runs"]] == [
      (s, k, False) for s in STRATEGIES for k in (0, 1)]


def test_json_holds_the_means_of_the_run_summaries(grid):
  workdir, report = grid
  with open(os.path.join(workdir, "ablation.json")) as f:
    assert json.load(f) == json.loads(json.dumps(report))
  first = summary(workdir, "none", 0)
  assert report["baselines"] == {"mean_predictor": {
      "eval/mse": first["eval/mse_mean_predictor"],
      "eval/mse_ood": first["eval/mse_ood_mean_predictor"]}}
  assert [m["name"] for m in report["task"]["metrics"]] == ["mse"]
  for strategy in STRATEGIES:
    row = report["rows"][strategy]
    runs = [summary(workdir, strategy, k) for k in (0, 1)]
    assert (row["seeds_completed"], row["seeds_total"]) == (2, 2)
    for key in ("eval/mse", "eval/mse_ood", "train/steps_per_sec"):
      values = [r[key] for r in runs]
      assert row[key]["mean"] == pytest.approx(np.mean(values))
      assert row[key]["std"] == pytest.approx(np.std(values, ddof=1))
      if key.startswith("eval/"):
        ratios = [r[key] / r[f"{key}_mean_predictor"] for r in runs]
        assert row[f"{key}_rel"]["mean"] == pytest.approx(np.mean(ratios))
    for key in ("train/score_norm", "train/energy_gap"):
      last = [[r[key] for r in metrics_io.read_jsonl(
          os.path.join(workdir, strategy, f"seed{k}", "metrics.jsonl")) if key in r]
          for k in (0, 1)]
      if strategy == "none" and key == "train/energy_gap":
        assert row[key] is None and last == [[], []]
      else:
        assert row[key]["mean"] == pytest.approx(np.mean([v[-1] for v in last]))


def test_markdown_table_has_a_row_per_strategy_and_the_baseline(grid):
  workdir, report = grid
  header, rows = table(workdir)
  assert header == COLUMNS
  assert list(rows) == ["mean predictor"] + STRATEGIES
  assert rows["mean predictor"][2] == f"{report['baselines']['mean_predictor']['eval/mse']:#.4g}"
  for strategy in STRATEGIES:
    cells, row = rows[strategy], report["rows"][strategy]
    assert cells[1] == "2/2"
    assert cells[2] == f"{row['eval/mse']['mean']:#.4g} ± {row['eval/mse']['std']:.2g}"
    assert cells[4].startswith(f"{row['eval/mse_ood']['mean']:#.4g} ± ")
    for seed in (0, 1):  # a collapsed run is averaged, but never silently
      collapse = summary(workdir, strategy, seed)["collapse_step"]
      assert (f"seed{seed} collapsed at step {collapse}" in cells[-1]) == (collapse is not None)
  assert rows["none"][7] == "n/a"  # no energy loss, no energy gap
  assert_png(os.path.join(workdir, "ablation.png"))


def test_cli_rerun_skips_completed_runs(grid):
  workdir, _ = grid
  summaries = [os.path.join(workdir, s, f"seed{k}", "summary.json")
               for s in STRATEGIES for k in (0, 1)]
  before = [os.stat(p).st_mtime_ns for p in summaries]
  args = ["--config=configs/q204.py:tiny", *(f"--config.{k}={v}" for k, v in SHORT.items()),
          f"--strategies={','.join(STRATEGIES)}", "--seeds=2", f"--workdir={workdir}"]
  result = subprocess.run([sys.executable, "-m", "experiments.ablate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert (result.stdout + result.stderr).count("already completed, skipped") == 4
  assert [os.stat(p).st_mtime_ns for p in summaries] == before
  with open(os.path.join(workdir, "ablation.md")) as f:
    assert f"python -m experiments.ablate {' '.join(args)}\n" in f.read()
  with open(os.path.join(workdir, "ablation.json")) as f:
    assert all(r["skipped"] for r in json.load(f)["runs"])


def test_a_diverged_run_is_flagged_and_the_others_complete(tmp_path):
  workdir = str(tmp_path)
  report = ablation.run_ablation(tiny(energy_loss_weight=float("inf")), ["none", "cd_langevin"],
                                 1, workdir)
  assert [r["status"] for r in report["runs"]] == ["completed", "diverged"]
  failed = report["runs"][1]
  assert failed["failed_step"] is not None and "non-finite" in failed["message"]
  _, rows = table(workdir)
  assert rows["none"][1] == "1/1" and rows["none"][2] != "n/a"
  assert rows["cd_langevin"][1] == "0/1" and rows["cd_langevin"][2] == "n/a"
  assert rows["cd_langevin"][-1] == f"0/1 seeds; seed0 diverged at step {failed['failed_step']}"
  assert report["rows"]["cd_langevin"]["eval/mse"] is None
  assert_png(os.path.join(workdir, "ablation.png"))
  # Deterministic training diverges again: a rerun keeps the outcome instead of redoing it.
  diverged = os.path.join(workdir, "cd_langevin", "seed0", "summary.json")
  before = os.stat(diverged).st_mtime_ns
  again = ablation.run_ablation(tiny(energy_loss_weight=float("inf")), ["none", "cd_langevin"],
                                1, workdir)
  assert [(r["status"], r["skipped"]) for r in again["runs"]] == [
      ("completed", True), ("diverged", True)]
  assert os.stat(diverged).st_mtime_ns == before
  assert again["rows"]["cd_langevin"]["flags"] == report["rows"]["cd_langevin"]["flags"]


def test_report_only_trains_nothing_and_flags_unfinished_runs(tmp_path):
  workdir = str(tmp_path)
  partial = ablation.run_dir(workdir, "none", 0)
  loop.train_and_evaluate(base.run_config(tiny(train_steps=10), "none"), partial,
                          progress=False)
  report = ablation.run_ablation(tiny(), ["none", "nce_random"], 1, workdir, report_only=True)
  assert [(r["status"], r["steps"]) for r in report["runs"]] == [(None, 10), (None, None)]
  assert report["rows"]["none"]["flags"] == ["0/1 seeds", "seed0 unfinished (step 10)"]
  assert report["rows"]["nce_random"]["flags"] == ["0/1 seeds", "seed0 not run"]
  assert not os.path.exists(ablation.run_dir(workdir, "nce_random", 0))
  assert json.load(open(os.path.join(partial, "summary.json")))["steps"] == 10
  assert os.path.exists(os.path.join(workdir, "ablation.md"))


def test_plot_cli_curves_and_inner_steps_sweep(grid, compile_cache):
  run = os.path.join(grid[0], "cd_full", "seed0")
  result = subprocess.run([sys.executable, "-m", "experiments.plot", run, "--inner_steps=0,2",
                           "--eval_size=16"], cwd=REPO, env=compile_cache, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  for name in ("curves.png", "inner_steps.png"):
    assert os.path.join(run, name) in result.stdout
    assert_png(os.path.join(run, name))
  with open(os.path.join(run, "eval.json")) as f:
    evaluated = json.load(f)
  assert evaluated["eval_size"] == 16 and evaluated["inner_steps"] == [0, 2]
  for key in ("eval/mse_k0", "eval/mse_k2", "eval/mse_ood_k0", "eval/mse_ood_k2"):
    assert np.isfinite(evaluated[key]), key


def test_inner_steps_sweep_scores_every_completed_run_once(grid):
  """--inner_steps: each run's final checkpoint scored per count (its eval.json), the means over
  seeds in the report, a table and a figure; a rerun reuses the scores instead of redoing them."""
  workdir, _ = grid
  report = ablation.run_ablation(tiny(), STRATEGIES, 2, workdir, inner_steps=[0, 2])
  evals = {}
  for strategy in STRATEGIES:
    for seed in (0, 1):
      with open(os.path.join(workdir, strategy, f"seed{seed}", "eval.json")) as f:
        evals[strategy, seed] = json.load(f)
      saved = evals[strategy, seed]
      assert (saved["step"], saved["inner_steps"], saved["eval_size"]) == (20, [0, 2], 64)
    sweep = report["rows"][strategy]["inner_steps"]
    assert list(sweep) == ["0", "2"]
    for k in (0, 2):
      for key in ("eval/mse", "eval/mse_ood"):
        values = [evals[strategy, seed][f"{key}_k{k}"] for seed in (0, 1)]
        assert sweep[str(k)][key]["mean"] == pytest.approx(np.mean(values))
        assert sweep[str(k)][key]["values"] == pytest.approx(values)
  with open(os.path.join(workdir, "ablation.md")) as f:
    text = f.read()
  assert "## MSE by inner descent steps" in text and "| strategy | k=0 | k=2 |" in text
  assert_png(os.path.join(workdir, "ablation_inner_steps.png"))
  scored = os.path.join(workdir, "none", "seed0", "eval.json")
  before = os.stat(scored).st_mtime_ns
  again = ablation.run_ablation(tiny(), STRATEGIES, 2, workdir, inner_steps=[0, 2],
                                report_only=True)
  assert os.stat(scored).st_mtime_ns == before
  assert again["rows"]["none"]["inner_steps"] == report["rows"]["none"]["inner_steps"]
  # Under report_only a run without this sweep is reported unswept, not evaluated.
  fresh = ablation.run_ablation(tiny(), STRATEGIES, 2, workdir, inner_steps=[1],
                                report_only=True)
  assert all(r["inner_steps"] is None for r in fresh["runs"])
  assert "inner_steps" not in fresh["rows"]["none"]


# Every landscape measure on few problems, steps and trajectories.
LANDSCAPE = landscape.Settings(eval_size=4, radii=(0.25,), repair_timesteps=(0,),
                               repair_steps=(0, 2), acceptance_inner_steps=(),
                               chain_negatives=1, scaling_extra_steps=(0, 2), trajectories=2,
                               breadth_renoise=(0.0,), chunk=4)


def test_landscape_columns_measure_every_completed_run_once(grid):
  """landscape settings: each run's final checkpoint measured by experiments.landscape (its
  landscape.json), the means of landscape.summary over seeds in the report, a table and a
  figure; a rerun reuses the measurements, and other settings (a file of another layout,
  another seed, another size) are measured again, not taken for these."""
  workdir, _ = grid
  report = ablation.run_ablation(tiny(), STRATEGIES, 2, workdir, landscape_settings=LANDSCAPE)
  for strategy in STRATEGIES:
    columns = []
    for seed in (0, 1):
      saved = metrics_io.read_json(os.path.join(workdir, strategy, f"seed{seed}",
                                                "landscape.json"))
      assert (saved["run"]["step"], saved["run"]["seed"]) == (20, seed)
      assert saved["settings"] == LANDSCAPE.as_json()
      columns.append(landscape.summary(saved))
    row = report["rows"][strategy]["landscape"]
    for key, _, _ in landscape.columns({}):
      for suffix in ("", "_ood"):
        values = [c[key + suffix] for c in columns]
        assert row[key + suffix]["values"] == pytest.approx(values)
  with open(os.path.join(workdir, "ablation.md")) as f:
    text = f.read()
  assert "## Energy landscape" in text and "Spearman(E, residual)" in text
  assert "4 problems per set" in text and "2 trajectories a problem" in text
  assert_png(os.path.join(workdir, "ablation_landscape.png"))
  measured = os.path.join(workdir, "none", "seed0", "landscape.json")
  before = os.stat(measured).st_mtime_ns
  again = ablation.run_ablation(tiny(), STRATEGIES, 2, workdir, landscape_settings=LANDSCAPE)
  assert os.stat(measured).st_mtime_ns == before
  assert again["rows"]["cd_full"]["landscape"] == report["rows"]["cd_full"]["landscape"]
  older = metrics_io.read_json(measured)  # a landscape.json of another layout: measured again
  older["settings"]["format"] -= 1
  metrics_io.write_json_atomic(measured, older)
  ablation.run_ablation(tiny(), ["none"], 1, workdir, landscape_settings=LANDSCAPE)
  assert metrics_io.read_json(measured)["settings"] == LANDSCAPE.as_json()
  for other in (dataclasses.replace(LANDSCAPE, eval_size=5),
                dataclasses.replace(LANDSCAPE, seed=1)):
    unmeasured = ablation.run_ablation(tiny(), STRATEGIES, 2, workdir, landscape_settings=other,
                                       report_only=True)
    assert all(r["landscape"] is None for r in unmeasured["runs"])
    assert "landscape" not in unmeasured["rows"]["none"]


def test_merge_of_grids_run_apart_is_the_grid_report(grid, tmp_path):
  """The grid run as two grids (one per strategy), merged: every run, a row per strategy of
  both seeds' results, the grid's table, every command named; protocols that differ, or a
  seed in two reports, are refused."""
  workdir, report = grid
  apart = [ablation.summarize([r for r in report["runs"] if r["strategy"] == s], [s],
                              report["config"], report["base_config"], report["task"],
                              f"grid {s}")
           for s in STRATEGIES]
  merged = ablation.merge(apart, "merge command")
  assert merged["strategies"] == STRATEGIES and merged["seeds"] == [0, 1]
  assert merged["runs"] == report["runs"]
  for strategy in STRATEGIES:
    row, runs = merged["rows"][strategy], [summary(workdir, strategy, k) for k in (0, 1)]
    assert (row["seeds_completed"], row["seeds_total"]) == (2, 2)
    for key in ("eval/mse", "eval/mse_ood"):
      assert row[key]["values"] == pytest.approx([r[key] for r in runs])
  assert merged["command"] == "grid none\ngrid cd_full\nmerge command"
  ablation.write_report(merged, str(tmp_path))
  assert table(str(tmp_path)) == table(workdir)
  assert_png(os.path.join(tmp_path, "ablation.png"))
  other = dict(apart[1], config=dict(apart[1]["config"], learning_rate=3e-4))
  with pytest.raises(ablation.schema.ConfigError, match="differ in config"):
    ablation.merge([apart[0], other])
  with pytest.raises(ablation.schema.ConfigError, match="none seed 0 finished in more than one"):
    ablation.merge([apart[0], apart[0]])


def test_a_grid_split_by_seed_merges_into_the_grid(grid, tmp_path):
  """--first_seed=1 --seeds=1 trains seed 1 alone, the same run as the grid's seed 1; merged
  with a report whose seed 1 did not run, it takes that seed's place and gives the grid's row.
  A seed finished in two reports is refused."""
  workdir, report = grid
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  shutil.copytree(os.path.join(workdir, "none", "seed0"), os.path.join(first, "none", "seed0"))
  unfinished = ablation.run_ablation(tiny(), ["none"], 2, first, report_only=True)
  assert unfinished["rows"]["none"]["flags"] == ["1/2 seeds", "seed1 not run"]
  alone = ablation.run_ablation(tiny(), ["none"], 1, second, first_seed=1)
  assert alone["seeds"] == [1] and not os.path.exists(os.path.join(second, "none", "seed0"))
  for key in ("eval/mse", "eval/mse_ood"):
    assert summary(second, "none", 1)[key] == summary(workdir, "none", 1)[key]
  merged = ablation.merge([unfinished, alone])
  assert [(r["seed"], r["status"]) for r in merged["runs"]] == [(0, "completed"), (1, "completed")]
  assert merged["rows"]["none"]["flags"] == []
  for key in ("eval/mse", "eval/mse_ood"):
    assert merged["rows"]["none"][key] == report["rows"]["none"][key]
  with pytest.raises(ablation.schema.ConfigError, match="none seed 1 finished in more than one"):
    ablation.merge([merged, alone])
  with pytest.raises(ablation.schema.ConfigError, match="first_seed: must be >= 0, got -1"):
    ablation.run_ablation(tiny(), ["none"], 1, str(tmp_path), first_seed=-1)
