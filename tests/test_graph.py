"""Graph transforms (libtraffic/model/graph.py) against element-by-element computations written
from LibCity's definitions, on a small directed graph with a sink (no out-edges) and an isolated node.

GWNET builds its supports with scipy.sparse, STGCN its Chebyshev terms with dense NumPy loops;
both divide by degrees (row sums), and a zero degree gives 0 where it is inverted.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from libtraffic.model import graph
from libtraffic.utils.errors import LibTrafficError

# Node 3 is a sink (edges in, none out); node 4 has no edge at all. Weights differ per direction.
A = np.array([
    [0.0, 0.5, 0.0, 0.2, 0.0],
    [0.3, 0.0, 0.9, 0.0, 0.0],
    [0.0, 0.4, 0.0, 0.7, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
], dtype=np.float32)
N = len(A)
ROWS = range(N)


def degrees(a: np.ndarray) -> list[float]:
    return [sum(float(a[i, j]) for j in ROWS) for i in ROWS]


def inv(value: float, power: float) -> float:
    return value ** power if value > 0 else 0.0


def random_walk_loops(a: np.ndarray) -> np.ndarray:
    """out[i, j] = a[i, j] / d_i (LibCity's asym_adj)."""
    d = degrees(a)
    return np.array([[a[i, j] * inv(d[i], -1) for j in ROWS] for i in ROWS])


def sym_loops(a: np.ndarray) -> np.ndarray:
    """LibCity's sym_adj, (A D^-1/2)^T D^-1/2: out[i, j] = a[j, i] / sqrt(d_i d_j), d the row sums of a."""
    d = degrees(a)
    return np.array([[a[j, i] * inv(d[i], -0.5) * inv(d[j], -0.5) for j in ROWS] for i in ROWS])


def test_fixture_has_a_sink_and_an_isolated_node() -> None:
    assert degrees(A)[3] == 0 and A[:, 3].sum() > 0  # sink: zero degree, edges in
    assert A[4].sum() == A[:, 4].sum() == 0
    assert not np.allclose(A, A.T)


@pytest.mark.parametrize("adjtype, expected", [
    ("transition", lambda: [random_walk_loops(A)]),
    ("doubletransition", lambda: [random_walk_loops(A), random_walk_loops(A.T)]),
    ("symnadj", lambda: [sym_loops(A)]),
    ("normlap", lambda: [np.eye(N) - sym_loops(A)]),
    # scalap: the undirected graph max(A, A^T), its normalized Laplacian scaled with lambda_max = 2: L - I.
    ("scalap", lambda: [np.eye(N) - sym_loops(np.maximum(A, A.T)) - np.eye(N)]),
    ("identity", lambda: [np.eye(N)]),
])
def test_gwnet_supports(adjtype: str, expected) -> None:
    supports = graph.GWNET_SUPPORTS[adjtype](A)
    assert all(s.dtype == np.float32 and s.shape == (N, N) for s in supports)
    np.testing.assert_allclose(np.stack(supports), np.stack(expected()), rtol=1e-6, atol=1e-7)


def test_gwnet_supports_cover_libcitys_adjtypes() -> None:
    assert set(graph.GWNET_SUPPORTS) == {"doubletransition", "transition", "scalap", "normlap", "symnadj", "identity"}


def test_random_walk_rows_sum_to_one_except_where_no_edge_leaves() -> None:
    sums = graph.random_walk(A).sum(1)
    np.testing.assert_allclose(sums, [1, 1, 1, 0, 0], rtol=1e-6)


def chebyshev_laplacian_loops(a: np.ndarray) -> np.ndarray:
    """STGCN's scaled Laplacian: L = D - A with (i, j) divided by sqrt(d_i d_j) where both degrees
    are positive; then 2 L / lambda - I with lambda the largest real part of L's eigenvalues."""
    d = degrees(a)
    lap = np.array([[(d[i] if i == j else 0.0) - float(a[i, j]) for j in ROWS] for i in ROWS])
    for i, j in itertools.product(ROWS, ROWS):
        if d[i] > 0 and d[j] > 0:
            lap[i, j] /= np.sqrt(d[i] * d[j])
    lam = max(np.linalg.eigvals(lap), key=lambda z: (z.real, z.imag)).real
    return 2 * lap / lam - np.eye(N)


@pytest.mark.parametrize("adj", [A, np.maximum(A, A.T)], ids=["directed", "symmetric"])
def test_chebyshev_laplacian(adj: np.ndarray) -> None:
    np.testing.assert_allclose(graph.chebyshev_laplacian(adj), chebyshev_laplacian_loops(adj), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ks", [1, 2, 3, 4])
def test_chebyshev_polynomials(ks: int) -> None:
    lap = chebyshev_laplacian_loops(A)
    expected = [np.eye(N), lap]
    while len(expected) < ks:
        expected.append(2 * lap @ expected[-1] - expected[-2])
    terms = graph.STGCN_GRAPH_CONVS["chebconv"](A, ks)
    assert terms.shape == (ks, N, N) and terms.dtype == np.float32
    np.testing.assert_allclose(terms, np.stack(expected[:ks]), rtol=1e-5, atol=1e-6)


def test_first_order() -> None:
    """(A + I) scaled by 1 / sqrt(d_i d_j), d the row sums of A + I; not transposed."""
    d = [x + 1 for x in degrees(A)]
    expected = np.array([[(A[i, j] + (i == j)) / np.sqrt(d[i] * d[j]) for j in ROWS] for i in ROWS])
    for ks in (1, 3):  # gcnconv ignores Ks
        terms = graph.STGCN_GRAPH_CONVS["gcnconv"](A, ks)
        assert terms.shape == (1, N, N)
        np.testing.assert_allclose(terms[0], expected, rtol=1e-6)


def test_chebyshev_order_below_one_is_refused() -> None:
    with pytest.raises(LibTrafficError, match="at least 1"):
        graph.STGCN_GRAPH_CONVS["chebconv"](A, 0)


@pytest.mark.parametrize("adj", [np.zeros((4, 4)), np.diag([1.0, 2.0, 0.0, 3.0])], ids=["no edges", "self-loops only"])
def test_chebyshev_on_a_graph_without_edges_is_an_error_not_nan(adj: np.ndarray) -> None:
    """LibCity divides by the Laplacian's largest eigenvalue, 0 here, and trains on NaN."""
    with pytest.raises(LibTrafficError, match="gcnconv"):
        graph.chebyshev_laplacian(adj)
    assert np.isfinite(graph.first_order(adj)).all()  # the first-order matrix needs no eigenvalue


def test_finite_adjacency_refuses_infinite_weights() -> None:
    adj = A.copy()
    adj[4, 4] = np.inf
    with pytest.raises(LibTrafficError, match="calculate_weight_adj"):
        graph.finite_adjacency(adj, "STGCN")
    assert graph.finite_adjacency(A.astype(np.float64), "STGCN").dtype == np.float32
