"""Baseline `ired`: the paper (2 energy-descent steps + NCE) at the guide's scale."""

from configs import base


def get_config(arg=None):
  return base.baseline("ired", arg)
