"""Baseline `none`: denoising MSE only, no negatives, at the guide's scale."""

from configs import base


def get_config(arg=None):
  return base.baseline("none", arg)
