"""init_params is PyTorch's default nn.Linear init: U(+-1/sqrt(fan_in)) for kernels and biases."""

import math

import jax
import numpy as np
import pytest

from ired_cd import model as model_lib

# The golden model's layers: (fan_in, fan_out) of each kernel.
LAYERS = {"time_fc1": (128, 128), "time_fc2": (128, 128), "fc1": (800, 512), "fc2": (512, 512),
          "fc3": (512, 512), "fc4": (512, 400), "t_map_fc2": (128, 1024),
          "t_map_fc3": (128, 1024)}


@pytest.fixture(scope="module")
def params():
  return model_lib.init_params(model_lib.EnergyMLP(out_dim=400, num_timesteps=10),
                               jax.random.PRNGKey(0))


@pytest.mark.parametrize("part", ["kernel", "bias"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_uniform_within_one_over_sqrt_fan_in(params, name, part):
  """Every value lies within the bound, the extremes reach it (a narrower init would not),
  and the spread is a uniform's (bound / sqrt(3)), not a normal's or a constant's."""
  fan_in, fan_out = LAYERS[name]
  value = np.asarray(params[name][part])
  assert value.shape == ((fan_in, fan_out) if part == "kernel" else (fan_out,))
  bound = 1.0 / math.sqrt(fan_in)
  assert np.max(np.abs(value)) <= bound
  assert np.max(value) > 0.95 * bound and np.min(value) < -0.95 * bound
  assert abs(np.mean(value)) < 0.2 * bound
  np.testing.assert_allclose(np.std(value), bound / math.sqrt(3), rtol=0.15)


def test_layers_and_keys_draw_independently(params):
  """Every layer is initialised, layers of one shape get different values, and another key
  gives other values."""
  assert set(params) == set(LAYERS)
  assert not np.array_equal(params["fc2"]["kernel"], params["fc3"]["kernel"])
  assert not np.array_equal(params["fc2"]["bias"], params["fc3"]["bias"])
  other = model_lib.init_params(model_lib.EnergyMLP(out_dim=400, num_timesteps=10),
                                jax.random.PRNGKey(1))
  assert not np.array_equal(params["fc4"]["bias"], other["fc4"]["bias"])
