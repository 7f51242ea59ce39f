"""One run per workdir: an exclusive ``fcntl.flock`` on WORKDIR/.lock while a run writes there.

The kernel drops a flock when its holder dies, so the file a killed run (kill -9)
leaves behind blocks nothing; while held, the file names the holder (host, pid,
since) for the refusal. A clean exit removes it. On several hosts sharing the
workdir only process 0 takes the lock, and every process learns whether it did.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_NAME = ".lock"


class WorkdirBusy(RuntimeError):
  """Another process holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds ``workdir`` for the duration of the block; raises WorkdirBusy if another holds it."""
  path = os.path.join(workdir, LOCK_NAME)
  fd = _acquire(path) if jax.process_index() == 0 else None
  taken = fd is not None
  if jax.process_count() > 1:
    taken = bool(multihost_utils.broadcast_one_to_all(np.asarray(taken)))
  if not taken:
    raise WorkdirBusy(f"workdir {workdir} is in use by {_holder(path)}: one run per workdir; "
                      "wait for that run to end, or use another --workdir")
  try:
    yield
  finally:
    if fd is not None:
      os.unlink(path)  # still locked: a process that opened it meanwhile sees it was removed
      os.close(fd)


def _acquire(path: str) -> Optional[int]:
  """The locked file's descriptor with this process recorded in it; None if another holds it."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return None
    try:  # the holder may have released and removed the file between our open and flock
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)
  since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps(dict(host=socket.gethostname(), pid=os.getpid(), since=since)).encode())
  os.fsync(fd)
  return fd


def _holder(path: str) -> str:
  """'pid P on HOST since T' as the lock file records it."""
  try:
    with open(path) as f:
      holder = json.load(f)
    return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
  except (OSError, ValueError, KeyError, TypeError):  # taken a moment ago, not yet recorded
    return "another process"
