"""Data parallelism on simulated CPU devices (each test runs its own subprocess:
XLA_FLAGS must be set before jax is imported)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from configs import base, q204
from ired_cd import checkpoint, loop, train
from tests.conftest import assert_refused

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_devices(code: str, devices: int = 4, timeout: int = 300):
  """Runs ``code`` with ``devices`` CPU devices; returns the JSON it prints last."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=REPO)
  prelude = textwrap.dedent("""
      import json, jax, numpy as np
      from configs import base, q204
      from ired_cd import schema, loop, parallel, train
      def tiny(strategy, **overrides):
        return base.run_config(q204.get_config("tiny"), strategy, **overrides)
      """)
  result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_sharded_state_and_no_buffer_traffic():
  out = run_on_devices("""
      import re
      setup = train.build_setup(tiny("cd_full"))
      mesh = parallel.make_mesh()
      state = train.init_state(setup, mesh=mesh)
      step = train.jit_train_step(setup, mesh, state)
      hlo = step.lower(state).compile().as_text()
      collectives = []
      for line in hlo.splitlines():
        m = re.search(r" (all-gather|all-to-all|collective-permute|reduce-scatter)(-start)?\\(", line)
        if m:
          collectives.append([m.group(1), re.search(r'op_name="([^"]*)"', line).group(1)])
      state, metrics = step(state)
      print(json.dumps(dict(
          devices=jax.device_count(),
          storage_spec=list(state.replay.storage.sharding.spec),
          shard_shapes=[list(s.data.shape) for s in state.replay.storage.addressable_shards],
          params_replicated=all(p.sharding.is_fully_replicated
                                for p in jax.tree_util.tree_leaves(state.params)),
          collectives=collectives, loss=float(metrics["loss"]),
          per_shard_count=np.asarray(state.replay.count).sum(axis=1).tolist())))
      """)
  assert out["devices"] == 4
  assert out["storage_spec"] == ["data"]
  assert out["shard_shapes"] == [[1, 10, 16, 16]] * 4  # 64 slots per bucket over 4 devices
  assert out["params_replicated"]
  # Only the residual filter's batch quantile gathers across devices; the buffer never moves.
  assert all(kind == "all-gather" and "quantile" in name for kind, name in out["collectives"])
  assert out["per_shard_count"] == [8, 8, 8, 8]  # each device stored its own 8 negatives
  assert np.isfinite(out["loss"])


def test_four_devices_match_one_device():
  """Same keys, same batch: the sharded step gives the single-device loss and parameters."""
  out = run_on_devices("""
      res = {}
      for strategy in ("none", "ired"):
        for n in (1, 4):
          setup = train.build_setup(tiny(strategy))
          mesh = parallel.make_mesh(n)
          state = train.init_state(setup, mesh=mesh)
          step = train.jit_train_step(setup, mesh, state)
          losses = []
          for _ in range(3):
            state, metrics = step(state)
            losses.append(float(metrics["loss"]))
          res[f"{strategy}{n}"] = dict(losses=losses,
                                       kernel=np.asarray(state.params["fc2"]["kernel"]).tolist())
      print(json.dumps(res))
      """)
  for strategy in ("none", "ired"):
    one, four = out[f"{strategy}1"], out[f"{strategy}4"]
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(four["kernel"], one["kernel"], rtol=1e-5, atol=1e-7)


def test_evaluation_on_four_devices_matches_one_device():
  """The sampler's problems split over the data axis, parameters replicated: the answers of
  one device, and of a problem alone."""
  out = run_on_devices("""
      from ired_cd import evaluation, sampler
      setup = train.build_setup(tiny("cd_full"))
      params = train.init_state(setup).ema_params
      preds = {}
      for n in (1, 4):
        evaluator = evaluation.Evaluator(setup, size=12, chunk=8, mesh=parallel.make_mesh(n))
        inputs, _ = evaluator.sets[""]
        preds[n] = evaluator.predict(params, inputs, 2)
      mesh = evaluator.mesh
      sample = sampler.make_sampler(setup.energy_fn, setup.schedule)
      alone = evaluation.predict(sample, params, inputs[5:6], evaluator.keys[5:6], 2, 4, mesh)
      rows, keys = (jax.device_put(a[:8], parallel.batch_sharding(mesh))
                    for a in (inputs, evaluator.keys))
      out = sample(jax.device_put(params, parallel.replicated(mesh)), rows, keys, 2)
      print(json.dumps(dict(one=preds[1].tolist(), four=preds[4].tolist(), alone=alone.tolist(),
                            chunk=evaluator.chunk, out_spec=list(out.sharding.spec),
                            out_devices=len(out.sharding.device_set))))
      """)
  assert out["chunk"] == 8
  assert out["out_spec"] == ["data"] and out["out_devices"] == 4
  np.testing.assert_allclose(out["four"], out["one"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["alone"][0], out["four"][5], rtol=1e-5, atol=1e-6)


def test_four_device_checkpoint_restores_on_one_device(tmp_path):
  workdir = str(tmp_path / "run")
  out = run_on_devices(f"""
      summary = loop.train_and_evaluate(
          tiny("cd_langevin_replay", train_steps=20, eval_every=0), {workdir!r}, progress=False)
      print(json.dumps(dict(steps=summary["steps"])))
      """)
  assert out["steps"] == 20
  config = base.run_config(q204.get_config("tiny"), "cd_langevin_replay")
  setup = train.build_setup(config)
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"))
  state, step = store.restore(train.init_state(setup))
  store.close()
  assert step == 20 and int(state.step) == 20
  assert state.replay.storage.shape == (1, 10, 64, 16)
  # 20 steps x 32 negatives over 10 buckets, 64 slots each: full or close to full.
  assert int(np.sum(state.replay.count)) == int(np.sum(np.minimum(
      np.asarray(state.replay.count), 64)))
  assert int(np.sum(state.replay.count)) > 0.8 * 10 * 64
  assert np.all(np.isfinite(np.asarray(state.replay.storage)))
  config.train_steps = 30
  summary = loop.train_and_evaluate(config, workdir, progress=False)
  assert summary["steps"] == 30 and summary["status"] == "completed"


def test_batch_not_divisible_by_devices_is_refused(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", "--config=configs/q204.py:tiny",
       "--config.batch_size=30", f"--workdir={tmp_path / 'run'}", "--progress=false"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert_refused(result, "config.batch_size: 30 does not split over 4 devices")
  assert not (tmp_path / "run").exists()


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_on_localhost(tmp_path):
  """Two processes x 2 devices through jax.distributed (coordinator on 127.0.0.1): one run,
  outputs written once by process 0, checkpoints by both; a relaunch resumes."""
  workdir = tmp_path / "run"

  def launch(steps):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.run", "--config=configs/q204.py:tiny",
         f"--config.train_steps={steps}", "--config.eval_every=0", f"--workdir={workdir}",
         "--progress=false", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    return outs

  outs = launch(20)
  assert "done: steps=20" in outs[0] and "done:" not in outs[1]
  summary = json.load(open(workdir / "summary.json"))
  assert summary["steps"] == 20 and np.isfinite(summary["eval/mse"])
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20"]
  outs = launch(30)
  assert "Resuming from the checkpoint at step 20" in outs[0]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows if "train/loss" in r] == [10, 20, 30]
