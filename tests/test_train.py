"""The jitted train step on the tiny config: every strategy, determinism, tracing, EMA, donation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ired_cd import schema
from ired_cd import replay, train
from tests import _tiny


def _host(tree):
  """A host copy (the device arrays of a donated state are deleted by the next step)."""
  return jax.tree_util.tree_map(np.array, tree)


def _run(strategy, steps, seed=None):
  setup = _tiny.tiny_setup(strategy)
  step_fn = _tiny.tiny_step(strategy)
  state = train.init_state(setup, seed)
  metrics = []
  for _ in range(steps):
    state, m = step_fn(state)
    metrics.append(m)
  return state, metrics


@pytest.mark.parametrize("strategy", schema.STRATEGIES)
def test_every_strategy_trains(strategy):
  """Two steps: finite metrics, step counter 2, parameters moved, one compiled executable."""
  setup = _tiny.tiny_setup(strategy)
  init = _host(train.init_state(setup).params)
  state, metrics = _run(strategy, 2)
  assert int(state.step) == 2
  for m in metrics:
    for name, value in m.items():
      assert np.isfinite(np.asarray(value)).all(), (strategy, name)
  assert float(metrics[-1]["grad_norm"]) > 0
  moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                                 state.params, init)
  assert all(v > 0 for v in jax.tree_util.tree_leaves(moved))
  if strategy in schema.CD_STRATEGIES:
    assert {"energy_pos", "energy_neg", "langevin_displacement"} <= set(metrics[-1])
  assert ("replay_fill" in metrics[-1]) == (strategy in ("cd_langevin_replay", "cd_full"))
  assert _tiny.TRACES[strategy] == 1


def test_same_seed_same_state_different_seed_differs():
  """Three steps from the same seed give bitwise-equal states; another seed does not."""
  a, _ = _run("cd_full", 3, seed=5)
  b, _ = _run("cd_full", 3, seed=5)
  c, _ = _run("cd_full", 3, seed=6)
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.params["fc1"]["kernel"], c.params["fc1"]["kernel"])
  assert not np.array_equal(a.replay.storage, c.replay.storage)
  assert _tiny.TRACES["cd_full"] == 1


def test_train_step_compiles_once():
  """Five steps of the jitted step: one trace (the new state does not retrace)."""
  state, _ = _run("cd_langevin_replay", 5)
  assert int(state.step) == 5
  assert _tiny.TRACES["cd_langevin_replay"] == 1


def test_multi_step_equals_single_steps():
  """make_multi_step(setup, 3) = three single steps (state) and the mean of their metrics."""
  setup = _tiny.tiny_setup("cd_full")
  singles, metrics = _run("cd_full", 3)
  multi, multi_metrics, health = train.make_multi_step(setup, 3)(train.init_state(setup))
  assert int(multi.step) == 3
  np.testing.assert_array_equal(multi.key, singles.key)
  np.testing.assert_array_equal(multi.replay.count, singles.replay.count)
  for x, y in zip(jax.tree_util.tree_leaves((multi.params, multi.ema_params, multi.opt_state)),
                  jax.tree_util.tree_leaves((singles.params, singles.ema_params,
                                             singles.opt_state))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(multi.replay.storage, singles.replay.storage, atol=1e-4)
  for name in ("loss", "loss_mse", "energy_weight", "replay_fill"):
    want = np.mean([float(m[name]) for m in metrics])
    np.testing.assert_allclose(multi_metrics[name], want, rtol=1e-4, atol=1e-7)
  assert int(health["nonfinite_steps"]) == 0 and bool(health["params_finite"])
  assert int(health["first_nonfinite"]) == 3 and "nonfinite_steps" not in multi_metrics


def test_bfloat16_matmuls_track_float32():
  """matmul_dtype='bfloat16' (cd_full, 3 steps from the same seed): the same batches and
  negatives, losses within bfloat16 error of float32, and a different program (bf16 dots)."""
  exp16 = train.build_setup(_tiny.tiny_config("cd_full", matmul_dtype="bfloat16"))
  step16 = train.jit_train_step(exp16)
  state16 = train.init_state(exp16)
  assert "bf16" in step16.lower(state16).as_text()
  _, metrics32 = _run("cd_full", 3)
  for m32 in metrics32:
    state16, m16 = step16(state16)
    for name in ("loss_mse", "energy_pos", "energy_neg", "score_norm"):
      np.testing.assert_allclose(m16[name], m32[name], rtol=0.05, atol=1e-3, err_msg=name)
    assert float(m16["loss_mse"]) != float(m32["loss_mse"])


def test_ema_copies_params_on_first_step():
  """EMA = params after step 1 (decay 0); step 2 is off the every-10 grid, so EMA stays put."""
  setup = _tiny.tiny_setup("none")
  step_fn = _tiny.tiny_step("none")
  state, _ = step_fn(train.init_state(setup))
  for e, p in zip(jax.tree_util.tree_leaves(state.ema_params),
                  jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_array_equal(e, p)
  after_one = _host(state.params)
  state, _ = step_fn(state)
  leaves = jax.tree_util.tree_leaves
  for e, p in zip(leaves(state.ema_params), leaves(after_one)):
    np.testing.assert_array_equal(e, p)
  assert not np.array_equal(state.params["fc1"]["kernel"], after_one["fc1"]["kernel"])


def test_replay_buffer_fills():
  """cd_langevin_replay stores every step's batch of negatives: 32 after one step, 64 after two."""
  setup = _tiny.tiny_setup("cd_langevin_replay")
  step_fn = _tiny.tiny_step("cd_langevin_replay")
  state = train.init_state(setup)
  assert state.replay is not None and int(jnp.sum(state.replay.count)) == 0
  assert state.replay.storage.shape == (1, 10, 64, 16)  # one shard on one device
  slots = state.replay.num_rows * state.replay.capacity
  for n in (1, 2):
    state, metrics = step_fn(state)
    assert int(jnp.sum(state.replay.count)) == 32 * n
    np.testing.assert_allclose(metrics["replay_fill"], 32 * n / slots)
    np.testing.assert_allclose(replay.fill_fraction(state.replay), 32 * n / slots)
  assert float(jnp.max(jnp.abs(state.replay.storage))) > 0
  assert float(metrics["replay_use"]) > 0.5  # second step: buckets seen in step 1 replay


def test_state_is_donated():
  """The jitted step donates its input: the old state's arrays are deleted afterwards."""
  setup = _tiny.tiny_setup("cd_langevin_replay")
  old = train.init_state(setup)
  new, _ = _tiny.tiny_step("cd_langevin_replay")(old)
  assert old.params["fc1"]["kernel"].is_deleted()
  assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(old.opt_state))
  assert old.replay.storage.is_deleted()
  assert not new.params["fc1"]["kernel"].is_deleted()
