"""The computational graph that circuits are made of: nodes, edges, and their names.

Owns the vocabulary every circuit analysis shares (edge attribution, ablation runs, the circuit page,
the JSON export), after the edge-level graphs of Conmy et al. (2023), "Towards Automated Circuit
Discovery" (ACDC), Syed, Rager & Conmy (2023), "Attribution Patching Outperforms Automated Circuit
Discovery" (EAP), and Hanna, Pezzelle & Belinkov (2024), "Have Faith in Faithfulness" (EAP-IG):

nodes
    ``embed``            the token (and position) embeddings: the residual stream at slot 0
    ``a{l}.h{h}``        attention head ``h`` of block ``l``: its share of the attention output that is
                         added to the residual stream (its slice of the output projection's input times
                         the matching columns of the projection; a post-attention norm, as in Gemma 2/3,
                         scales every head's share by the same factor of the current run, so the shares
                         still add up to the block's attention output exactly)
    ``m{l}``             the MLP of block ``l``: its output added to the residual stream
    ``logits``           the model's output: reads the final residual stream (slot L)

Upstream nodes (``writers``) are ``embed``, every head and every MLP; downstream nodes (``readers``)
are every head, every MLP and ``logits``. Every reader has its own input: the residual stream at the
point where it reads, before any norm (a head reads block ``l``'s input; an MLP reads block ``l``'s
input plus block ``l``'s attention output in a sequential block, block ``l``'s input alone in a parallel
block, see ``models.adapter.RESIDUAL_TOPOLOGIES``; ``logits`` reads slot L). Each reader's input is the
sum of the outputs of the writers upstream of it (plus constant biases, equal in every run), so an
edge ``u -> v`` exists exactly when ``u``'s output is a term of ``v``'s input:

    embed      -> every reader
    a{l}.h{h}  -> m{l} (sequential blocks only), every head and MLP of blocks > l, logits
    m{l}       -> every head and MLP of blocks > l, logits

Edge ablation (a circuit ``C`` is a set of edges): reader ``v`` receives
``input_v(run) - sum over writers u with (u, v) not in C of (a_u(run) - a_u(corrupted))`` where
``run`` is the run being made, so an edge outside the circuit carries the corrupted (or mean) value and
an edge inside it carries whatever the run computes. This module computes nothing: it only names and
orders nodes and edges (readers' edges grouped by reader, writers in topological order).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

EMBED, LOGITS = "embed", "logits"


def head_name(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def mlp_name(layer: int) -> str:
    return f"m{layer}"


@dataclass(frozen=True)
class Node:
    name: str
    kind: str  # "embed" | "head" | "mlp" | "logits"
    layer: int  # block index; -1 for embed, n_layers for logits
    head: int | None = None

    @property
    def order(self) -> tuple[int, int]:
        """Topological order: by block, heads before the MLP (the MLP may read them)."""
        rank = {"embed": 0, "head": 1, "mlp": 2, "logits": 3}[self.kind]
        return (self.layer, rank)


@dataclass(frozen=True)
class Graph:
    """Nodes and edges of one model shape; ``edges[i] = (writer index, reader index)`` into ``nodes``."""

    n_layers: int
    n_heads: int
    parallel: bool  # parallel blocks: the MLP of block l does not read block l's attention

    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        out = [Node(EMBED, "embed", -1)]
        for layer in range(self.n_layers):
            out += [Node(head_name(layer, h), "head", layer, h) for h in range(self.n_heads)]
            out.append(Node(mlp_name(layer), "mlp", layer))
        out.append(Node(LOGITS, "logits", self.n_layers))
        return tuple(out)

    @cached_property
    def index(self) -> dict[str, int]:
        return {node.name: i for i, node in enumerate(self.nodes)}

    def node(self, name: str) -> Node:
        return self.nodes[self.index[name]]

    @cached_property
    def writers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind != "logits")

    @cached_property
    def readers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind != "embed")

    def feeds(self, writer: Node, reader: Node) -> bool:
        """Whether ``writer``'s output is a term of ``reader``'s input."""
        if writer.kind == "logits" or reader.kind == "embed":
            return False
        if writer.kind == "embed" or reader.kind == "logits":
            return True
        if writer.layer < reader.layer:
            return True
        return (writer.layer == reader.layer and writer.kind == "head" and reader.kind == "mlp"
                and not self.parallel)

    @cached_property
    def edges(self) -> np.ndarray:
        """(edge, 2) int array of (writer index, reader index), grouped by reader in topological order."""
        pairs = [(self.index[w.name], self.index[r.name]) for r in self.readers for w in self.writers
                 if self.feeds(w, r)]
        return np.array(pairs, dtype=np.int64).reshape(-1, 2)

    def edge_names(self) -> list[str]:
        return [f"{self.nodes[w].name}->{self.nodes[r].name}" for w, r in self.edges]

    def edge_index(self, writer: str, reader: str) -> int:
        matches = np.flatnonzero((self.edges[:, 0] == self.index[writer]) & (self.edges[:, 1] == self.index[reader]))
        if len(matches) == 0:
            raise KeyError(f"no edge {writer}->{reader}")
        return int(matches[0])


def graph_for(model) -> Graph:
    """The graph of a loaded model (``workbench.models.loader.LoadedModel``)."""
    return Graph(model.info.n_layers, model.info.n_heads, bool(model.spec.parallel))
