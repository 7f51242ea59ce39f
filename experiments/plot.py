r"""Plots of one run: its training and evaluation curves, and an inference-steps sweep.

  python -m experiments.plot results/ds_inverse/cd_full_cpu
  python -m experiments.plot results/ds_inverse/cd_full_cpu --inner_steps=0,1,2,5,10,20 \
      --eval_size=1024

Writes WORKDIR/curves.png from WORKDIR/metrics.jsonl (losses, eval MSE against
the mean predictor, and the health instruments the run logged). With
--inner_steps it also scores the latest checkpoint with each number of inner
descent steps (experiment.evaluate_checkpoint, which writes WORKDIR/eval.json)
and plots the MSE against them in WORKDIR/inner_steps.png. Headless (Agg).
"""

import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # headless: files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from ired_cd import config as config_lib  # noqa: E402
from ired_cd import experiment, metrics_io, tasks  # noqa: E402

_INNER = flags.DEFINE_list("inner_steps", None,
                           "Also sweep the sampler's inner descent steps, e.g. 0,1,2,5,10,20.")
_SIZE = flags.DEFINE_integer("eval_size", None,
                             "Problems per evaluation set in the sweep (default: the run's).")

SPLITS = {"": "in-distribution", "_ood": "harder"}  # metric suffix -> title
# Config fields that are tuples in the config and lists in config.json.
TUPLE_FIELDS = ("eval_inner_steps", "energy_loss_timestep_range")


def series(rows, key):
  """(steps, values) of the rows that carry ``key``; non-finite values (stored as text) too."""
  points = [(r["step"], float(r[key])) for r in rows if key in r]
  steps, values = zip(*points) if points else ((), ())
  return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def set_yscale(ax, values):
  """Log scale for positive data, symlog where it crosses zero (energies, CD losses)."""
  finite = values[np.isfinite(values)]
  if finite.size and np.all(finite > 0):
    ax.set_yscale("log")
  elif finite.size:
    # Linear up to the typical magnitude, log beyond (a runaway stays on the axis); few
    # decade ticks, so the labels around zero stay apart.
    magnitudes = np.abs(finite[finite != 0])
    ax.set_yscale("symlog", linscale=2.0,
                  linthresh=float(np.median(magnitudes)) if magnitudes.size else 1.0)
    ax.yaxis.get_major_locator().set_params(numticks=6)


def read_json(path):
  """The JSON object in ``path``, or None when there is none."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_config(workdir):
  """The run's resolved config (WORKDIR/config.json) as a ConfigDict, tuples restored."""
  saved = read_json(os.path.join(workdir, "config.json"))
  if saved is None:
    raise FileNotFoundError(f"no config.json in {workdir}: not a run directory")
  saved = config_lib.with_added_fields(saved)
  for field in TUPLE_FIELDS:
    saved[field] = tuple(saved[field])
  return ml_collections.ConfigDict(saved)


def _health_panels(out_dim):
  """(title, [(key, style)], reference lines) of each training-health panel."""
  return [
      ("energy gap E_neg - E_pos", [("train/energy_gap", "-")], []),
      ("‖∇E‖ (score norm)", [("train/score_norm", "-")],
       [(math.sqrt(out_dim), f"√D = {math.sqrt(out_dim):.3g} (healthy)")]),
      ("x0 prediction norm", [("train/pred_norm", "-"), ("train/target_norm", "--")], []),
      ("Langevin displacement", [("train/langevin_displacement", "-")], []),
  ]


def plot_curves(workdir):
  """Writes WORKDIR/curves.png from metrics.jsonl; returns its path."""
  rows = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  if not rows:
    raise FileNotFoundError(f"no metrics rows in {os.path.join(workdir, 'metrics.jsonl')}")
  config = load_config(workdir)
  summary = read_json(os.path.join(workdir, "summary.json")) or {}
  out_dim = tasks.get_task(config.task, config.rank).out_dim
  panels = [("training loss", [("train/loss", "-"), ("train/loss_mse", "--")], []),
            ("eval MSE (sampler, EMA)", [("eval/mse", "-o"), ("eval/mse_ood", "-s")], [])]
  panels += _health_panels(out_dim)
  panels = [p for p in panels if any(series(rows, key)[0].size for key, _ in p[1])]
  ncols = 3
  nrows = math.ceil(len(panels) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
  for ax, (title, keys, references) in zip(axes.flat, panels):
    values = []
    for key, style in keys:
      steps, ys = series(rows, key)
      line, = ax.plot(steps, ys, style, ms=3, label=key.split("/", 1)[1])
      values.append(ys)
      baseline = series(rows, f"{key}_mean_predictor")[1]
      if key.startswith("eval/") and baseline.size:
        ax.axhline(baseline[-1], ls="--", color=line.get_color(), lw=1,
                   label=f"{key.split('/', 1)[1]} mean predictor")
    for value, label in references:
      ax.axhline(value, ls=":", color="gray", label=label)
    if summary.get("collapse_step") is not None:
      ax.axvline(summary["collapse_step"], color="red", ls=":", lw=1, label="collapse")
    set_yscale(ax, np.concatenate(values))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes.flat[len(panels):]:
    ax.set_visible(False)
  status = summary.get("status", "no summary")
  fig.suptitle(f"{workdir}: {config.mining_strategy}, seed {config.seed}, {status}"
               + (f", collapsed at step {summary['collapse_step']}"
                  if summary.get("collapse_step") is not None else ""))
  fig.tight_layout()
  path = os.path.join(workdir, "curves.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def inner_steps_sweep(workdir, inner_steps, eval_size=None):
  """Scores the latest checkpoint per inner-step count; writes inner_steps.png.

  Returns (png path, evaluate_checkpoint's result, also in WORKDIR/eval.json).
  """
  inner_steps = [int(k) for k in inner_steps]
  config = load_config(workdir)
  result = experiment.evaluate_checkpoint(config, workdir, inner_steps=inner_steps,
                                          eval_size=eval_size)
  fig, axes = plt.subplots(1, len(SPLITS), figsize=(5 * len(SPLITS), 3.6))
  for ax, (suffix, title) in zip(axes, SPLITS.items()):
    # One inner-step count gives unsuffixed keys; several give ..._k{n} keys.
    mse = [result[f"eval/mse{suffix}_k{k}" if len(inner_steps) > 1 else f"eval/mse{suffix}"]
           for k in inner_steps]
    ax.plot(inner_steps, mse, "-o", label="sampler (EMA)")
    ax.axhline(result[f"eval/mse{suffix}_mean_predictor"], ls="--", color="gray",
               label="mean predictor")
    ax.set_yscale("log")
    ax.set_xticks(inner_steps)
    ax.set_xlabel("inner descent steps per timestep")
    ax.set_ylabel("MSE")
    ax.set_title(f"{title} (n={result['eval_size']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"{workdir}: {config.mining_strategy}, checkpoint step {result['step']}")
  fig.tight_layout()
  path = os.path.join(workdir, "inner_steps.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path, result


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # library chatter (orbax, XLA) from WARNING on
    logging.set_verbosity(logging.WARNING)
  if len(argv) != 2:
    sys.exit("usage: python -m experiments.plot WORKDIR [--inner_steps=0,1,2,5] [--eval_size=N]")
  workdir = argv[1]
  try:
    inner = [int(k) for k in _INNER.value] if _INNER.value else None
  except ValueError:
    sys.exit(f"error: --inner_steps: integers >= 0, got {_INNER.value}")
  if inner is not None and min(inner) < 0:
    sys.exit(f"error: --inner_steps: integers >= 0, got {_INNER.value}")
  if _SIZE.value is not None and _SIZE.value <= 0:
    sys.exit(f"error: --eval_size: must be a positive integer, got {_SIZE.value}")
  try:
    print(f"curves: {plot_curves(workdir)}")
    if inner:
      path, result = inner_steps_sweep(workdir, inner, _SIZE.value)
      print(f"inner-steps sweep: {path} (numbers in {os.path.join(workdir, 'eval.json')})")
      for k in inner:
        tag = f"_k{k}" if len(inner) > 1 else ""
        print(f"  k={k}: mse={result[f'eval/mse{tag}']:.5g} "
              f"mse_ood={result[f'eval/mse_ood{tag}']:.5g}")
  except FileNotFoundError as err:
    sys.exit(f"error: {err}")


if __name__ == "__main__":
  app.run(main)
