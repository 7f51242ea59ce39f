"""Graph k-colouring on planted colourable graphs, generated on the device for every batch.

A graph hides a uniformly random colouring of its ``nodes`` with ``colours`` colours;
edges join only nodes of different colours, each such pair with the probability that
gives an average degree ``degree`` (harder set: ``degree_ood``, near the 3-colouring
threshold of 4.69, with far fewer proper colourings). Every instance is colourable.

The input is the adjacency matrix (nodes^2 entries, the width of IRED's 20 x 20
matrices). An answer is nodes x colours values, the target the planted colouring one-hot
as +-1; decoding takes the argmax per node. The hidden colours are uniformly random, so
the target is one of at least k! equivalent answers (colours permuted), and of many
more at low degree: the task is many-answered by construction. The verifier counts the
edges whose ends share a colour.

Baselines: a random colouring, and DSATUR (networkx) restricted to k colours: a node
DSATUR would give a colour beyond k takes the one with the fewest conflicts among its
coloured neighbours.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd import dimacs
from ired_cd.tasks import base

FIELDS = ("graph_nodes", "graph_colours", "graph_degree", "graph_degree_ood")
EVAL_TAG = 103  # the evaluation sets' random stream: default_rng([EVAL_TAG, seed, ood])


@dataclasses.dataclass(frozen=True)
class Colouring(base.DiscreteTask):
  """k-colouring of planted graphs; fields: the config's graph_* fields."""

  name = "colouring"
  baselines = ("random", "dsatur")
  file_suffixes = (".col",)

  nodes: int = 20
  colours: int = 3
  degree: float = 3.0
  degree_ood: float = 4.5

  @property
  def inp_dim(self) -> int:
    return self.nodes * self.nodes

  @property
  def out_dim(self) -> int:
    return self.nodes * self.colours

  def describe(self) -> str:
    return (f"{self.colours}-colouring, {self.nodes} nodes, degree {self.degree:g} (harder "
            f"{self.degree_ood:g})")

  def edge_probability(self, ood: bool) -> float:
    """P[edge] between two nodes of different colours: a share (k-1)/k of the n-1 other
    nodes differs, so the mean degree is p (n-1) (k-1)/k."""
    degree = self.degree_ood if ood else self.degree
    return min(1.0, degree * self.colours / ((self.colours - 1) * (self.nodes - 1)))

  def _graphs(self, colours, uniform, ood: bool, xp):
    """Planted graphs from hidden colours (B, n) and uniforms (B, n, n): (inputs, targets)."""
    differ = colours[:, :, None] != colours[:, None, :]
    upper = xp.triu(xp.ones((self.nodes, self.nodes), bool), 1)
    edges = (uniform < self.edge_probability(ood)) & differ & upper
    adjacency = (edges | xp.swapaxes(edges, 1, 2)).astype(xp.float32)
    return adjacency.reshape(len(colours), -1), self.encode(colours, xp)

  def sample(self, key, batch_size, ood=False, data=None):
    del data
    k_colours, k_edges = jax.random.split(key)
    colours = jax.random.randint(k_colours, (batch_size, self.nodes), 0, self.colours)
    uniform = jax.random.uniform(k_edges, (batch_size, self.nodes, self.nodes))
    return self._graphs(colours, uniform, ood, jnp)

  def eval_set(self, n, seed, ood):
    return self.planted(np.random.default_rng([EVAL_TAG, seed, int(ood)]), n, ood)

  def planted(self, rng: np.random.Generator, n: int, ood: bool):
    """``n`` planted graphs from ``rng``: (adjacency (n, nodes^2), hidden colourings one-hot
    (n, nodes k)), numpy."""
    colours = rng.integers(0, self.colours, (n, self.nodes))
    return self._graphs(colours, rng.random((n, self.nodes, self.nodes)), ood, np)

  def encode(self, assignment, xp=np):
    """Colours (B, n) -> one-hot +-1 answers (B, n k) float32."""
    one_hot = (assignment[..., None] == xp.arange(self.colours)).astype(xp.float32)
    return (2.0 * one_hot - 1.0).reshape(assignment.shape[0], -1)

  @property
  def values(self):
    return tuple(range(self.colours))

  def cnf(self, problem):
    """Variable i k + c + 1: node i has colour c. Each node one colour, no edge within a
    colour, and colours in order of first use (colour c > 0 only at a node after one of colour
    c - 1): one model per colouring up to its colours' names (``canonical``)."""
    adjacency = np.asarray(problem).reshape(self.nodes, self.nodes) > 0
    k = self.colours
    var = lambda i, c: i * k + c + 1  # noqa: E731
    clauses = [[var(i, c) for c in range(k)] for i in range(self.nodes)]
    clauses += [[-var(i, a), -var(i, b)] for i in range(self.nodes)
                for a in range(k) for b in range(a + 1, k)]
    clauses += [[-var(i, c), -var(j, c)] for i, j in zip(*np.nonzero(np.triu(adjacency, 1)))
                for c in range(k)]
    clauses += [[-var(i, c)] + [var(j, c - 1) for j in range(i)]
                for i in range(self.nodes) for c in range(1, k)]
    return [[int(lit) for lit in c] for c in clauses], self.nodes * k

  def from_model(self, model):
    chosen = np.asarray(model[:self.nodes * self.colours]).reshape(self.nodes, self.colours) > 0
    return np.argmax(chosen, axis=1)

  def decode(self, y):
    return y.reshape(y.shape[0], self.nodes, self.colours).argmax(-1)

  def canonical(self, assignment):
    """Colourings with their colours renamed in order of first use (node 0 has colour 0, the
    next new colour is 1, ...): colourings equal up to permuting the colours coincide."""
    assignment = np.asarray(assignment)
    first_use = np.argmax(assignment[:, :, None] == np.arange(self.colours), axis=1)  # (B, k)
    unused = ~np.any(assignment[:, :, None] == np.arange(self.colours), axis=1)
    order = np.argsort(np.where(unused, self.nodes, first_use), axis=1)
    rename = np.argsort(order, axis=1)  # colour -> its rank by first use
    return np.take_along_axis(rename, assignment, axis=1)

  def violations(self, inputs, assignment):
    """Edges (each counted once) whose two ends share a colour."""
    adjacency = inputs.reshape(inputs.shape[0], self.nodes, self.nodes)
    same = assignment[:, :, None] == assignment[:, None, :]
    return (jnp.sum(adjacency * same, axis=(1, 2)) / 2).astype(jnp.int32)

  def random_assignment(self, inputs, rng):
    return rng.integers(0, self.colours, (len(inputs), self.nodes))

  def classical(self, inputs, rng):
    """DSATUR (networkx.greedy_color) restricted to ``colours`` colours."""
    del rng  # deterministic
    adjacency = np.asarray(inputs).reshape(len(inputs), self.nodes, self.nodes) > 0
    return np.stack([dsatur(a, self.colours) for a in adjacency])

  def instance_size(self, path: str):
    """(nodes, edges) of a DIMACS graph file (dimacs.DimacsError if malformed)."""
    nodes, edges = dimacs.read_col(path)
    return nodes, len(edges)

  def fitting(self, sizes) -> dict:
    """Config fields of this task grown to hold graphs of ``sizes`` ((nodes, edges) each):
    graph_nodes, never below this task's."""
    return dict(graph_nodes=max([self.nodes] + [nodes for nodes, _ in sizes]))

  def read_instance(self, path: str):
    """(adjacency (inp_dim,), number of nodes) of a DIMACS graph file; InstanceError for a
    graph with more nodes than the model takes."""
    nodes, edges = dimacs.read_col(path)
    if nodes > self.nodes:
      raise base.InstanceError(path, f"{nodes} nodes; the run's model takes at most "
                               f"{self.nodes} (config graph_nodes)")
    adjacency = np.zeros((self.nodes, self.nodes), np.float32)
    for u, v in edges:
      adjacency[u - 1, v - 1] = adjacency[v - 1, u - 1] = 1.0
    return adjacency.reshape(-1), nodes

  def format_answer(self, answer, size: int, violations: int) -> str:
    """The .sol text of an answer (out_dim,) for a graph of ``size`` nodes."""
    return dimacs.colouring_solution(self.decode(np.asarray(answer)[None])[0][:size],
                                     violations)


def dsatur(adjacency: np.ndarray, colours: int) -> np.ndarray:
  """DSATUR's colouring of one graph ((n, n) bool), colours beyond ``colours`` replaced, in
  DSATUR's order, by the colour fewest coloured neighbours have."""
  import networkx as nx  # noqa: PLC0415 - the baseline only
  graph = nx.from_numpy_array(adjacency.astype(np.int8))
  greedy = nx.coloring.greedy_color(graph, strategy="DSATUR")  # node -> colour, in its order
  result = np.full(len(adjacency), -1)
  for node, colour in greedy.items():
    if colour >= colours:
      taken = np.bincount(result[adjacency[node] & (result >= 0)], minlength=colours)
      colour = int(np.argmin(taken[:colours]))
    result[node] = colour
  return result
