"""experiments.compile: the run compiled for TPU slices and GPUs on this CPU (compile-only).

Needs the compile packages (requirements-compile.txt, installed with pip --target into
compile_packages.FOLDER): skipped without them on a workstation, failed on CI.
"""

import json
import os
import subprocess
import sys
import types

import jax
import pytest

from configs import base, q204
from ired_cd import compile_packages, hardware, loop, schema
from tests.conftest import on_ci

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def needs_compile_packages():
  """Skips the test without the compile packages on a workstation; fails it on CI."""
  if not os.path.isdir(compile_packages.FOLDER):
    message = (f"compile packages not installed in {compile_packages.FOLDER} "
               f"({compile_packages.INSTALL})")
    if on_ci():
      pytest.fail(f"{message}; CI={os.environ['CI']} runs must have them")
    pytest.skip(message)


def compile_tool(*args, timeout=600):
  """(exit code, the JSON records printed, stderr) of experiments.compile on the tiny config."""
  needs_compile_packages()
  result = subprocess.run(
      [sys.executable, "-m", "experiments.compile", "--config=configs/q204.py:tiny", *args],
      cwd=REPO, capture_output=True, text=True, timeout=timeout)
  records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  return result.returncode, records, result.stderr


def check_memory(record):
  for program in ("train_memory", "sampler_memory"):
    assert record[program]["arguments"] > 0 and record[program]["needed"] > 0
  assert record["needed_bytes"] > 0 and record["fits"]
  assert 0 < record["needed_bytes"] < record["usable_bytes"]
  assert record["matmul_flops_per_step"] > 0 and record["roofline_step_s"] > 0


def test_single_host_tpu_slice_and_its_particle_programs():
  """The run on v5e-8, then the particle evaluation's program per K: a chunk of the tiny
  config's 64 rows (eval_chunk // K problems, a multiple of the 8 devices), K particles
  each, so a problem costs more with more particles."""
  code, [record, *particles], stderr = compile_tool("--target=v5e-8", "--strategies=none",
                                                    "--particles=1,4")
  assert code == 0, stderr[-2000:]
  assert (record["devices"], record["hosts"], record["device_kind"]) == (8, 1, "TPU v5 lite")
  assert record["per_device_batch"] == 32 // 8 and record["replay_shards"] is None
  check_memory(record)
  assert [(r["particles"], r["problems"], r["rows"]) for r in particles] == [(1, 64, 64),
                                                                            (4, 16, 64)]
  for r in particles:
    assert r["needed_bytes_per_problem"] == r["memory"]["needed"] * 8 / r["problems"] > 0
  assert particles[1]["needed_bytes_per_problem"] > particles[0]["needed_bytes_per_problem"]


def test_multi_host_tpu_slice_gives_each_device_one_replay_shard():
  code, [record], stderr = compile_tool("--target=v5e-16", "--strategies=cd_full")
  assert code == 0, stderr[-2000:]
  assert (record["devices"], record["hosts"]) == (16, 4)
  assert record["replay_shards"] == dict(total=16, per_device=1, devices_holding_one=16)
  check_memory(record)


def test_gpu_target_and_an_oversized_batch_reported_as_not_fitting():
  code, [record], stderr = compile_tool("--target=h100x8", "--hosts=2", "--strategies=none")
  assert code == 0, stderr[-2000:]
  assert (record["devices"], record["hosts"]) == (16, 2)
  assert record["device_kind"] == "NVIDIA H100 80GB HBM3"
  check_memory(record)
  # XLA compiles a GPU program of any size: the tool compares it with the GPU's memory.
  code, [record], stderr = compile_tool("--target=h100", "--strategies=none",
                                        "--config.batch_size=50000000")
  assert code == 1 and not record["fits"] and record["needed_bytes"] > record["usable_bytes"]
  assert stderr.strip().splitlines()[-1] == (
      "error: the batch does not fit h100 for every strategy (see above)")


def test_a_gpu_program_with_a_large_sort_compiles_without_a_gpu():
  """cd_full's residual filter sorts the batch; at 262,144 a device XLA would sort with CUB,
  whose compile asks the CUDA runtime for a device: the tool compiles XLA's own sort."""
  code, [record], stderr = compile_tool("--target=h100", "--strategies=cd_full",
                                        "--config.batch_size=262144")
  assert code == 0, stderr[-2000:]
  assert record["per_device_batch"] == 262144
  check_memory(record)


@pytest.mark.parametrize("name, devices, hosts", [
    ("v5e-8", 8, 1), ("v5e-16", 16, 4), ("v6e-256", 256, 64), ("v5p-128", 64, 16)])
def test_a_slice_has_the_hosts_of_its_cloud_machines(monkeypatch, name, devices, hosts):
  """Multi-host v5e and v6e slices are made of 4-chip hosts, v5e-8 is one 8-chip host; v5p
  counts TensorCores (two per chip), 4 chips a host."""
  needs_compile_packages()
  jax.devices()  # this process's own backends first, without the compile packages' plugins
  monkeypatch.syspath_prepend(compile_packages.FOLDER)
  mesh = hardware.target_mesh(hardware.get_target(name))
  assert mesh.devices.size == devices
  assert len({d.process_index for d in mesh.devices.flat}) == hosts
  with pytest.raises(schema.ConfigError, match=f"batch_size: 30 does not split over {devices} "):
    loop.check_devices(base.run_config(q204.get_config("tiny"), "none", batch_size=30), mesh)


@pytest.mark.parametrize("name, hosts, message", [
    ("v9-8", 1, "--target: unknown target 'v9-8'; known: v4-16, v4-32, v4-8, v5e-1, v5e-128, "),
    ("v5e-8", 2, "--hosts: a TPU slice's hosts are fixed by its name (v5e-8)"),
    ("h100x8", 0, "--hosts: a positive integer, got 0"),
    ("h100x0", 1, "--target: unknown target 'h100x0'")])
def test_bad_target_names_the_flag(name, hosts, message):
  with pytest.raises(hardware.TargetError) as err:
    hardware.get_target(name, hosts)
  assert str(err.value).startswith(message)


def test_without_the_compile_packages_the_refusal_is_the_command_that_installs_them(
    monkeypatch):
  def not_installed(**kwargs):
    raise RuntimeError("JAX TPU support not installed; cannot generate TPU topology.\nSee ...")
  monkeypatch.setattr(hardware.topologies, "get_topology_desc", not_installed)
  with pytest.raises(hardware.TargetError) as err:
    hardware.target_devices(hardware.get_target("v5e-8"))
  assert str(err.value) == (
      "--target: cannot compile for v5e-8 here (JAX TPU support not installed; cannot generate "
      f"TPU topology.); install the compile packages: {sys.executable} -m pip install --target "
      f"{sys.prefix}/compile-packages -r requirements-compile.txt")


@pytest.mark.parametrize("bytes_per_example, fixed, granule, curved, refusal, compiles", [
    (1000, 5_000, 1, False, None, 6), (37, 0, 8, False, None, 6),
    (1000, 5_000, 1, False, "HLO temporaries ({:.2f}K) exceeds available HBM (9765.62K)", 6),
    (37, 0, 8, False, "out of memory", 24),
    (400, 0, 1, True, "HLO temporaries ({:.2f}K) exceeds available HBM (9765.62K)", 20)])
def test_max_batch_finds_the_largest_fitting_batch_in_a_few_compiles(
    monkeypatch, bytes_per_example, fixed, granule, curved, refusal, compiles):
  """The search on a stand-in compiler whose memory grows in steps of ``granule`` examples
  (as XLA pads to tiles), or faster than linearly (``curved``: every line through two
  batches falls short), and that compiles what does not fit (GPU) or refuses it, saying
  how much it needed or not (TPU): a batch that fits, within 1 % of the largest, in at
  most ``compiles`` compiles."""
  usable, n = 10_000_000, 4

  def needed(per_device):
    padded = granule * -(-per_device // granule)
    return fixed + bytes_per_example * padded + (padded ** 2 // 8 if curved else 0)

  compiled = []

  def fake_compile_run(config, target, mesh, sampler_memory=None):
    compiled.append(config.batch_size)
    need = needed(config.batch_size // n)
    if refusal and need > usable:
      raise hardware.DoesNotFit("RESOURCE_EXHAUSTED: " + refusal.format(need / 1024))
    return dict(fits=need <= usable, needed_bytes=need, usable_bytes=usable,
                sampler_memory=sampler_memory)

  monkeypatch.setattr(hardware, "compile_run", fake_compile_run)
  config = base.get_config()
  config.batch_size = 64
  first = fake_compile_run(config, None, None)
  found = hardware.max_batch(config, None, types.SimpleNamespace(shape={"data": n}), first)
  largest = n * max(k for k in range(1, usable) if needed(k) <= usable)
  assert found % n == 0 and needed(found // n) <= usable
  assert largest * 0.99 <= found <= largest
  assert len(compiled) <= compiles, compiled


def test_a_refusal_names_what_the_compiler_needed():
  said = hardware.DoesNotFit("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
                             "required for HLO temporaries (78.58G) exceeds available HBM "
                             "(15.75G).")
  assert said.needed_bytes == int(78.58 * 1024 ** 3)
  assert hardware.DoesNotFit("RESOURCE_EXHAUSTED: Used 20.5G of 15.75G hbm").needed_bytes == (
      int(20.5 * 1024 ** 3))
  assert hardware.DoesNotFit("RESOURCE_EXHAUSTED: no figure").needed_bytes is None
