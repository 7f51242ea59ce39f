"""The golden-array loader: missing arrays skip a parity test locally and fail it on CI."""

import numpy as np
import pytest

from tests import conftest


@pytest.mark.parametrize("value,ci", [("true", True), ("True", True), ("1", True),
                                      ("false", False), ("", False), ("0", False), (None, False)])
def test_on_ci_reads_the_ci_variable(value, ci):
  assert conftest.on_ci({} if value is None else {"CI": value}) is ci


def test_missing_golden_fails_on_ci(monkeypatch, tmp_path):
  monkeypatch.setattr(conftest, "GOLDEN", tmp_path / "absent")
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception, match=r"golden arrays not found at .*absent.*CI=true"):
    conftest.golden("energy")


def test_missing_golden_skips_off_ci(monkeypatch, tmp_path):
  monkeypatch.setattr(conftest, "GOLDEN", tmp_path / "absent")
  monkeypatch.delenv("CI", raising=False)
  with pytest.raises(pytest.skip.Exception, match=r"golden arrays not found at .*absent"):
    conftest.golden("energy")


@pytest.mark.parametrize("ci", ["true", None])
def test_present_golden_loads_either_way(monkeypatch, tmp_path, ci):
  np.savez(tmp_path / "energy.npz", y=np.arange(3.0))
  monkeypatch.setattr(conftest, "GOLDEN", tmp_path)
  if ci is None:
    monkeypatch.delenv("CI", raising=False)
  else:
    monkeypatch.setenv("CI", ci)
  np.testing.assert_array_equal(conftest.golden("energy")["y"], [0.0, 1.0, 2.0])
