"""DIMACS files: CNF formulas (``.cnf``, as SATLIB writes them) and graphs (``.col``), read
strictly with the line of every fault named, and the answers written in the formats SAT and
colouring tools read.

CNF: ``c`` comment lines, one ``p cnf VARIABLES CLAUSES`` header, clauses of non-zero
literals each ended by ``0`` (a clause may span lines; the last may lack its ``0``), and,
as in SATLIB, a ``%`` line after which nothing is read. Graphs: ``c`` comments, one
``p edge NODES EDGES`` header (``p col`` too), ``e U V`` lines with 1-based nodes.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple


class DimacsError(ValueError):
  """A malformed file: ``path`` and ``line`` (1-based, None: the file as a whole) name where."""

  def __init__(self, path: str, message: str, line=None):
    super().__init__(f"{path}{f', line {line}' if line is not None else ''}: {message}")
    self.path, self.line, self.message = path, line, message


def _lines(path: str):
  """(number, stripped line) of the file's non-empty, non-comment lines."""
  try:
    with open(path, encoding="ascii", errors="strict") as f:
      text = f.read()
  except UnicodeDecodeError as err:
    raise DimacsError(path, f"not a text file ({err.reason} at byte {err.start})") from err
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if line and not line.startswith("c"):
      yield number, line


def _header(path: str, number: int, line: str, kinds: Sequence[str]) -> Tuple[int, int]:
  fields = line.split()
  if len(fields) != 4 or fields[1] not in kinds or not all(f.isdigit() for f in fields[2:]):
    raise DimacsError(path, f"expected 'p {kinds[0]} N M', got {line!r}", number)
  return int(fields[2]), int(fields[3])


def read_cnf(path: str) -> Tuple[int, List[List[int]]]:
  """(number of variables, clauses as lists of signed 1-based literals) of a DIMACS CNF file."""
  header, clauses, clause, header_line = None, [], [], None
  for number, line in _lines(path):
    if line.startswith("%"):  # SATLIB's end marker: a '0' line follows it
      break
    if line.startswith("p"):
      if header is not None:
        raise DimacsError(path, f"a second 'p' line (the first is line {header_line})", number)
      header, header_line = _header(path, number, line, ("cnf",)), number
      continue
    if header is None:
      raise DimacsError(path, f"a clause before the 'p cnf N M' header: {line!r}", number)
    for token in line.split():
      try:
        literal = int(token)
      except ValueError:
        raise DimacsError(path, f"{token!r} is not an integer literal", number) from None
      if abs(literal) > header[0]:
        raise DimacsError(path, f"literal {literal} names a variable above the header's "
                          f"{header[0]}", number)
      if literal:
        clause.append(literal)
      elif clause:
        clauses.append(clause)
        clause = []
      else:
        raise DimacsError(path, "an empty clause (the formula cannot be satisfied)", number)
  if clause:  # the last clause may lack its terminating 0
    clauses.append(clause)
  if header is None:
    raise DimacsError(path, "no 'p cnf N M' header")
  if len(clauses) != header[1]:
    raise DimacsError(path, f"the header declares {header[1]} clauses, the file holds "
                      f"{len(clauses)} (truncated?)", header_line)
  return header[0], clauses


def read_col(path: str) -> Tuple[int, List[Tuple[int, int]]]:
  """(number of nodes, edges as 1-based node pairs) of a DIMACS graph file."""
  header, edges, header_line = None, [], None
  for number, line in _lines(path):
    if line.startswith("p"):
      if header is not None:
        raise DimacsError(path, f"a second 'p' line (the first is line {header_line})", number)
      header, header_line = _header(path, number, line, ("edge", "col")), number
      continue
    fields = line.split()
    if fields[0] != "e" or len(fields) != 3 or not all(f.isdigit() for f in fields[1:]):
      raise DimacsError(path, f"expected 'e U V', got {line!r}", number)
    if header is None:
      raise DimacsError(path, "an edge before the 'p edge N M' header", number)
    u, v = int(fields[1]), int(fields[2])
    if not (1 <= u <= header[0] and 1 <= v <= header[0]):
      raise DimacsError(path, f"node outside 1..{header[0]} in {line!r}", number)
    if u == v:
      raise DimacsError(path, f"a self-loop on node {u} (no proper colouring exists)", number)
    edges.append((u, v))
  if header is None:
    raise DimacsError(path, "no 'p edge N M' header")
  if len(edges) != header[1]:
    raise DimacsError(path, f"the header declares {header[1]} edges, the file holds "
                      f"{len(edges)} (truncated?)", header_line)
  return header[0], edges


def cnf_text(variables: int, clauses: Sequence[Sequence[int]], comment: str = "") -> str:
  """A formula as SATLIB writes it: comment lines, ``p cnf N M``, one clause a line ended by
  ``0`` (without SATLIB's trailing ``%`` lines, which readers need not see)."""
  lines = [f"c {line}" for line in comment.splitlines()]
  lines.append(f"p cnf {variables} {len(clauses)}")
  lines += [" ".join(str(int(lit)) for lit in clause) + " 0" for clause in clauses]
  return "\n".join(lines) + "\n"


def col_text(nodes: int, edges: Sequence[Tuple[int, int]], comment: str = "") -> str:
  """A graph as DIMACS writes it: comment lines, ``p edge N M``, one ``e U V`` line an edge
  (1-based nodes)."""
  lines = [f"c {line}" for line in comment.splitlines()]
  lines.append(f"p edge {nodes} {len(edges)}")
  lines += [f"e {int(u)} {int(v)}" for u, v in edges]
  return "\n".join(lines) + "\n"


def sat_solution(assignment: Sequence[int], violations: int, per_line: int = 10) -> str:
  """The SAT competition's output: ``s SATISFIABLE`` when ``violations`` is 0, else
  ``s UNKNOWN``, then the assignment (+-1 per variable) as ``v`` lines ending in ``0``."""
  literals = [str(i + 1) if value > 0 else str(-(i + 1)) for i, value in enumerate(assignment)]
  lines = [f"c {violations} unsatisfied clauses",
           "s SATISFIABLE" if violations == 0 else "s UNKNOWN"]
  for start in range(0, len(literals), per_line):
    lines.append("v " + " ".join(literals[start:start + per_line]))
  lines.append("v 0")
  return "\n".join(lines) + "\n"


def colouring_solution(colours: Sequence[int], violations: int) -> str:
  """One ``v NODE COLOUR`` line per node (both 1-based), after a comment with the conflicts."""
  lines = [f"c {violations} edges join nodes of one colour"]
  lines += [f"v {node + 1} {int(colour) + 1}" for node, colour in enumerate(colours)]
  return "\n".join(lines) + "\n"
