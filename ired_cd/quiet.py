"""Holding back what C++ libraries print to the process's stderr (fd 2). No JAX import here:
``experiments.compile`` uses it around importing JAX."""

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def held_stderr():
  """Holds back what C++ libraries print to fd 2 (libtpu's and the CUDA stub's start-up
  lines on a machine without them); shown if the block raises."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+") as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.write(held.read())
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
