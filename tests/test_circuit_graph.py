"""The circuit graph's nodes and edges (workbench.circuit_graph)."""

import pytest

from workbench.circuit_graph import Graph


def _count(n_layers: int, n_heads: int, parallel: bool) -> int:
    """Edges counted independently: every writer pairs with every reader that reads after it."""
    writers = [(-1, 0)] + [(layer, kind) for layer in range(n_layers) for kind in [1] * n_heads + [2]]
    readers = [(layer, kind) for layer in range(n_layers) for kind in [1] * n_heads + [2]] + [(n_layers, 3)]
    count = 0
    for wl, wk in writers:
        for rl, rk in readers:
            if wk == 0 or rk == 3 or wl < rl or (wl == rl and wk == 1 and rk == 2 and not parallel):
                count += 1
    return count


@pytest.mark.parametrize("parallel", [False, True])
def test_edge_count_and_order(parallel):
    graph = Graph(3, 4, parallel)
    assert len(graph.nodes) == 1 + 3 * 5 + 1
    assert len(graph.edges) == _count(3, 4, parallel)
    # every edge goes forward in topological order, and no edge repeats
    for w, r in graph.edges:
        assert graph.nodes[w].order < graph.nodes[r].order
    assert len({tuple(e) for e in graph.edges.tolist()}) == len(graph.edges)
    assert ("a0.h1->m0" in graph.edge_names()) is (not parallel)
    assert graph.edge_index("embed", "logits") >= 0
    with pytest.raises(KeyError):
        graph.edge_index("m2", "a1.h0")
