"""The benchmark's machine-readable output (figures are not asserted: they are the measure)."""

import json
import os
import subprocess
import sys

import pytest

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
  assert set(by_kind["matmul_layouts"]["gflops_per_s"]) == {"x_w", "g_wT", "xT_g"}
  trains = [r for r in records if r["what"] == "train"]
  assert [r["strategy"] for r in trains] == ["none", "cd_full"]
  for r in trains + [by_kind["sampler"]]:
    assert r["matmul_dtype"] == matmul_dtype
    assert r["median_ms"] >= r["min_ms"] > 0 and r["flops_analytic"] > 0
    assert r["fraction_of_matmul_peak"] > 0
  assert trains[1]["flops_analytic"] > trains[0]["flops_analytic"]  # the chain's products


def test_bench_dtypes_interleaves_both_matmul_dtypes():
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


def test_bench_rejects_an_unknown_measure():
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench", "--config=configs/q204.py:tiny", "--what=flops"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "--what: 'flops' is not one of" in out.stderr
