"""The benchmark's machine-readable output (figures are not asserted: they are the measure)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import memory, timing
from tests.conftest import assert_refused

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_bench_prints_one_json_record_per_measure(matmul_dtype):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench", "--config=configs/q204.py:tiny",
       f"--config.matmul_dtype={matmul_dtype}", "--strategies=none,cd_full", "--steps=2",
       "--matmul_size=64"], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  records = [json.loads(line) for line in out.stdout.splitlines()]
  kinds = [r["what"] for r in records]
  assert kinds == ["device", "matmul", "matmul_layouts", "train", "train", "sampler", "process"]
  by_kind = {r["what"]: r for r in records}
  assert by_kind["matmul"]["matmul_dtype"] == matmul_dtype
  layouts = by_kind["matmul_layouts"]
  assert set(layouts["gflops_per_s"]) == {"x_w", "g_wT", "xT_g"}
  if matmul_dtype == "bfloat16":  # the copy is made on CPU: the other choice is without it
    assert layouts["row_major_copy"] is True
    assert set(layouts["gflops_per_s_other_copy_choice"]) == {"x_w", "g_wT", "xT_g"}
  else:
    assert "row_major_copy" not in layouts
  trains = [r for r in records if r["what"] == "train"]
  assert [r["strategy"] for r in trains] == ["none", "cd_full"]
  for r in trains + [by_kind["sampler"]]:
    assert r["matmul_dtype"] == matmul_dtype and r["energy_model"] == "mlp"
    assert r["median_ms"] >= r["min_ms"] > 0 and r["flops_analytic"] > 0
    assert r["fraction_of_matmul_peak"] > 0
  for r in trains:  # this machine's CPU keeps no device statistics
    assert r["program_memory_bytes"] > 0 and r["device_peak_bytes"] is None
  # The replay buffer and the chain's negatives are cd_full's own: a figure per strategy.
  assert trains[1]["program_memory_bytes"] > trains[0]["program_memory_bytes"]
  assert trains[1]["flops_analytic"] > trains[0]["flops_analytic"]  # the chain's products


def test_bench_dtypes_times_both_matmul_dtypes():
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench", "--config=configs/q204.py:tiny",
       "--what=dtypes", "--strategies=none", "--steps=2"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  (record,) = [json.loads(line) for line in out.stdout.splitlines()
               if json.loads(line)["what"] == "dtypes"]
  assert record["strategy"] == "none" and record["steps"] == 2
  assert set(record["median_ms"]) == {"float32", "bfloat16"}
  ratio = record["median_ms"]["float32"] / record["median_ms"]["bfloat16"]
  assert abs(record["speedup_bfloat16"] - ratio) < 1e-9


def test_interleaved_reverses_the_order_every_other_round():
  """Every round times each name once, the last name leading every other round; each name
  gets its own calls' times, in order."""
  calls = []

  def run(name):
    calls.append(name)
    return float(len(calls))

  times = timing.interleaved(4, ("float32", "bfloat16"), run)
  assert calls == ["bfloat16", "float32", "float32", "bfloat16"] * 2
  assert times == {"float32": [2.0, 3.0, 6.0, 7.0], "bfloat16": [1.0, 4.0, 5.0, 8.0]}


@pytest.mark.parametrize("rank,differ", [(4, False), (8, True)])
def test_bench_gram_compares_the_two_last_layers(rank, differ):
  """Hidden 64: out 16 (rank 4) never pays for the Gram form, so both programs are one;
  out 64 (rank 8) pays in cd_full's 10-step chain at batch 32."""
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench", "--config=configs/q204.py:tiny",
       f"--config.rank={rank}", "--what=gram", "--strategies=cd_full", "--steps=2",
       "--inner_steps=1"], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  (record,) = [json.loads(line) for line in out.stdout.splitlines()
               if json.loads(line)["what"] == "gram"]
  assert record["train_programs_differ"] is differ
  assert set(record["train_median_ms"]) == set(record["sampler_median_ms"]) == {"gram", "plain"}
  ratio = record["train_median_ms"]["plain"] / record["train_median_ms"]["gram"]
  assert abs(record["train_plain_over_gram"] - ratio) < 1e-9


def test_bench_particles_times_each_count_on_one_evaluation_chunk():
  """One record per K, on eval_chunk // K problems (the tiny config's chunk: 64 rows), of the
  energy named in the record (here the composed one)."""
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench", "--config=configs/sat.py:tiny,clauses",
       "--what=particles", "--particles=1,4", "--resample_tau=1", "--steps=4",
       "--inner_steps=1"], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  records = [json.loads(line) for line in out.stdout.splitlines()]
  particles = [r for r in records if r["what"] == "particles"]
  assert [(r["particles"], r["problems"], r["rows"]) for r in particles] == [(1, 64, 64),
                                                                            (4, 16, 64)]
  for r in particles:
    assert r["task"] == "sat" and r["energy_model"] == "clauses"
    assert r["resample_tau"] == 1.0 and r["program_memory_bytes"] > 0
    assert r["instances_per_s"] == pytest.approx(r["problems"] / (r["median_ms"] * 1e-3))


@pytest.mark.parametrize("flag, refusal", [
    ("--what=flops", "--what: 'flops' is not one of"),
    ("--particles=0", "--particles: integers >= 1, got ['0']"),
    ("--resample_tau=0", "--resample_tau: must be > 0"),
])
def test_bench_refuses_a_bad_flag_in_one_line(flag, refusal):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench", "--config=configs/q204.py:tiny", flag],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert_refused(out, refusal)


def test_device_peak_is_the_measurements_own_or_none():
  """The device's high-water mark is the process's: a measurement gets a figure (its peak above
  the bytes in use when it began) only where it raised the mark; CPU keeps no statistics."""
  before = {"bytes_in_use": 100, "peak_bytes_in_use": 900}
  assert memory.device_peak_bytes(before, {"bytes_in_use": 100, "peak_bytes_in_use": 1500}) == 1400
  assert memory.device_peak_bytes(before, {"bytes_in_use": 100, "peak_bytes_in_use": 900}) is None
  assert memory.device_peak_bytes(None, None) is None  # CPU: memory_stats() is None
  assert memory.device_peak_bytes({}, {}) is None


def test_program_bytes_count_arguments_and_outputs_less_donated():
  """An elementwise step updates a donated argument in place: its output costs nothing more."""
  x = jnp.zeros((256, 256), jnp.float32)
  step = lambda a: a * 2.0 + 1.0  # noqa: E731
  assert memory.program_bytes(jax.jit(step).lower(x).compile()) == 2 * x.nbytes
  assert memory.program_bytes(jax.jit(step, donate_argnums=0).lower(x).compile()) == x.nbytes
