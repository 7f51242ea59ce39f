"""Metric sinks of a run: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard;
the run's JSON files (config, summary, eval) read and written whole.

Rows look like ``{"step": 500, "train/loss": ..., "eval/mse": ...}``. A row is
flushed as soon as it is written, so a killed run loses no logged row; a
partial last line (a kill mid-write) is dropped when the file is read back.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List

import tensorboardX


class MalformedFile(ValueError):
  """A run's file that is not what the run writes (cut short or edited): named, never dropped
  or written over."""


class MalformedMetrics(MalformedFile):
  """A line of a metrics file is JSON, but not a row (an object with an integer "step")."""


def read_jsonl(path: str) -> List[Dict]:
  """The complete rows of a metrics file (a truncated last line is ignored).

  Raises MalformedMetrics, naming the file and line, for a line that parses
  but is not a row: no run writes one, so it is not ours to drop.
  """
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for number, line in enumerate(f, 1):
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
        raise MalformedMetrics(
            f"{path}: line {number} is not a metrics row ({line.strip()[:60]}); each line "
            'must be a JSON object with an integer "step": fix or remove that line')
      rows.append(row)
  return rows


def read_json(path: str):
  """The JSON object in ``path``, or None when there is none; MalformedFile, naming the file,
  when it holds no JSON object (cut short or edited)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      value = json.load(f)
    except ValueError as err:  # not JSON, or not UTF-8
      raise MalformedFile(f"{path}: not JSON ({err}): cut short or edited; restore it, or "
                          "start afresh in another workdir") from err
  if not isinstance(value, dict):
    raise MalformedFile(f"{path}: holds a {type(value).__name__}, not a JSON object; restore "
                        "it, or start afresh in another workdir")
  return value


def write_atomic(path: str, write, binary: bool = True) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path`` (named for this process), then
  renames it over ``path``: a crash or a kill leaves the old file or none, never half of one,
  and two processes never write into one temporary file."""
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb" if binary else "w") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to ``path`` through a temporary file and a rename (``write_atomic``)."""
  write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), binary=False)


class MetricsWriter:
  """Appends rows to WORKDIR/metrics.jsonl and scalars to WORKDIR/tensorboard."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    rows = read_jsonl(self.path)
    kept = [r for r in rows if r.get("step", 0) <= resume_step]
    if len(kept) != len(rows) or has_partial_line(self.path):
      # Rows past the restored checkpoint are recomputed by this run: drop them.
      with open(f"{self.path}.tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(f"{self.path}.tmp", self.path)
    self._file = open(self.path, "a")
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                          purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    row = {"step": int(step)}
    row.update({k: _jsonable(v) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    self._file.close()
    self._tb.close()


def _jsonable(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


def has_partial_line(path: str) -> bool:
  """Whether the last line of ``path`` is cut short (no newline at its end)."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return False
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"
