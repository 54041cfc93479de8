"""Graph transforms of an adjacency matrix, as LibCity's graph models compute them.

Every function takes the dataset's (N, N) ``adj_mx`` (weights, 0 = no edge) and returns a dense
float32 array. Degrees are row sums; a node without edges gets a 0 where a degree is inverted
(LibCity's ``d_inv[np.isinf(d_inv)] = 0``). Each model picks its transforms by name from the tables
at the end, so a config value selects a row, not a branch.

Notation: A the adjacency, D = diag(row sums of A), I the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from libtraffic.utils.errors import LibTrafficError


def _inverse(values: np.ndarray, power: float) -> np.ndarray:
    """values ** power with the entries of zero degree set to 0 (not inf)."""
    with np.errstate(divide="ignore"):
        result = np.power(values, power)
    result[~np.isfinite(result)] = 0.0
    return result


def random_walk(adj: np.ndarray) -> np.ndarray:
    """D^-1 A: each row divided by its sum (GWNET 'transition', DCRNN's random-walk matrix)."""
    adj = np.asarray(adj, dtype=np.float32)
    return (_inverse(adj.sum(1), -1.0)[:, None] * adj).astype(np.float32)


def sym_normalized(adj: np.ndarray) -> np.ndarray:
    """D^-1/2 A^T D^-1/2 (GWNET 'symnadj'; LibCity transposes A, which matters for directed graphs)."""
    adj = np.asarray(adj, dtype=np.float32)
    d = _inverse(adj.sum(1), -0.5)
    return (d[:, None] * adj.T * d[None, :]).astype(np.float32)


def normalized_laplacian(adj: np.ndarray) -> np.ndarray:
    """I - D^-1/2 A^T D^-1/2 (GWNET 'normlap')."""
    return (np.eye(len(adj), dtype=np.float32) - sym_normalized(adj)).astype(np.float32)


def scaled_laplacian(adj: np.ndarray, lambda_max: float | None = 2.0, undirected: bool = True) -> np.ndarray:
    """2 L / lambda_max - I, L the normalized Laplacian of max(A, A^T) when ``undirected``.

    ``lambda_max`` None: the eigenvalue of largest magnitude of L (DCRNN's 'laplacian' filter; LibCity
    asks ARPACK for it, here the symmetric eigensolver gives it, also for a graph of one node).
    """
    adj = np.asarray(adj, dtype=np.float32)
    if undirected:
        adj = np.maximum(adj, adj.T)
    lap = normalized_laplacian(adj).astype(np.float64)
    if lambda_max is None:
        eigenvalues = np.linalg.eigvalsh(lap) if undirected else np.linalg.eigvals(lap).real
        lambda_max = float(eigenvalues[np.argmax(np.abs(eigenvalues))])
        if abs(lambda_max) < 1e-8:
            raise LibTrafficError(
                "The graph's normalized Laplacian is 0 (every sensor's only edge is a self-loop), so it cannot be "
                "scaled by its largest eigenvalue. Give the dataset a .rel file with edges between sensors, or use "
                "another --filter_type.")
    return (2.0 / lambda_max * lap - np.eye(len(lap))).astype(np.float32)


def self_loop_normalized(adj: np.ndarray) -> np.ndarray:
    """D~^-1/2 (A + I)^T D~^-1/2, D~ the row sums of A + I (TGCN's graph convolution).

    Computed in float64 (LibCity adds a float64 sparse identity) and rounded to float32 once."""
    adj = np.asarray(adj, dtype=np.float64) + np.eye(len(adj))
    d = _inverse(adj.sum(1), -0.5)
    return (d[:, None] * adj.T * d[None, :]).astype(np.float32)


def chebyshev_laplacian(adj: np.ndarray) -> np.ndarray:
    """STGCN's scaled Laplacian 2 L / lambda - I of the directed graph: L = D - A with entry (i, j)
    divided by sqrt(d_i d_j) where both degrees are positive, lambda its largest real eigenvalue."""
    adj = np.asarray(adj, dtype=np.float64)
    d = adj.sum(1)
    lap = np.diag(d) - adj
    both = np.outer(d > 0, d > 0)
    lap = np.where(both, lap / np.sqrt(np.where(both, np.outer(d, d), 1.0)), lap)
    lam = np.linalg.eigvals(lap).real.max()
    if not lam > 1e-8:  # no edge between distinct nodes: LibCity divides by 0 and gets NaN
        raise LibTrafficError(
            "STGCN's Chebyshev graph convolution needs a graph with edges between sensors, but the adjacency "
            "matrix has none (the .rel file is missing or empty, or weight_adj_epsilon cut every weight), so "
            "its Laplacian is 0 and cannot be scaled by its largest eigenvalue. Give the dataset a .rel file "
            "with edges, or use --graph_conv_type gcnconv.")
    return (2 * lap / lam - np.eye(len(adj))).astype(np.float32)


def chebyshev_polynomials(lap: np.ndarray, order: int) -> np.ndarray:
    """(order, N, N): T0 = I, T1 = lap, Tk = 2 lap T(k-1) - T(k-2)."""
    if order < 1:
        raise LibTrafficError(f"The Chebyshev order (STGCN's Ks) must be at least 1, got {order}.")
    lap = np.asarray(lap, dtype=np.float64)
    terms = [np.eye(len(lap)), lap]
    for _ in range(2, order):
        terms.append(2 * lap @ terms[-1] - terms[-2])
    return np.asarray(terms[:order], dtype=np.float32)


def first_order(adj: np.ndarray) -> np.ndarray:
    """(1, N, N): D~^-1/2 (A + I) D~^-1/2, STGCN's first-order approximation."""
    adj = np.asarray(adj, dtype=np.float64) + np.eye(len(adj))
    s = 1.0 / np.sqrt(adj.sum(1))
    return (s[:, None] * adj * s[None, :])[None].astype(np.float32)


def finite_adjacency(adj: np.ndarray, model: str) -> np.ndarray:
    """``adj`` as float32, refusing infinite or NaN weights (a graph model cannot use them)."""
    adj = np.asarray(adj, dtype=np.float32)
    if not np.isfinite(adj).all():
        raise LibTrafficError(
            f"{model} needs finite edge weights, but the adjacency matrix has infinite or NaN entries: with "
            "init_weight_inf_or_zero 'inf' and set_weight_link_or_dist 'dist', absent edges are inf until "
            "calculate_weight_adj turns distances into weights. Set --calculate_weight_adj true (or "
            "--init_weight_inf_or_zero zero).")
    return adj


def identity(adj: np.ndarray) -> np.ndarray:
    return np.eye(len(adj), dtype=np.float32)


#: GWNET's ``adjtype`` -> the supports it builds (a list of (N, N) matrices).
GWNET_SUPPORTS: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
    "scalap": lambda a: [scaled_laplacian(a)],
    "normlap": lambda a: [normalized_laplacian(a)],
    "symnadj": lambda a: [sym_normalized(a)],
    "transition": lambda a: [random_walk(a)],
    "doubletransition": lambda a: [random_walk(a), random_walk(a.T)],
    "identity": lambda a: [identity(a)],
}

def reversed_row_values(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` with each row's nonzero values in reverse order over that row's nonzero positions.

    Row [0, a, 0, b, c] becomes [0, c, 0, b, a]. This is the matrix LibCity's DCRNN multiplies by
    when it is given the random-walk matrix D^-1 A: its sparse product with the diagonal lists each
    row's entries from the last column to the first, and LibCity pairs those values with positions
    sorted from the first column to the last.
    """
    matrix = np.asarray(matrix)
    out = np.zeros_like(matrix)
    rows, cols = np.nonzero(matrix)  # row-major: each row's columns ascending
    starts = np.searchsorted(rows, rows, side="left")
    ends = np.searchsorted(rows, rows, side="right")
    source = starts + ends - 1 - np.arange(len(rows))  # the mirror position within the same row
    out[rows, cols] = matrix[rows[source], cols[source]]
    return out


#: DCRNN's ``filter_type`` -> its diffusion supports (the graph signal is multiplied by each from the
#: left). LibCity uses the transposed random walk, so a hop sends a sensor's reading along its edges.
DCRNN_SUPPORTS: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
    "laplacian": lambda a: [scaled_laplacian(a, lambda_max=None)],
    "random_walk": lambda a: [random_walk(a).T],
    "dual_random_walk": lambda a: [random_walk(a).T, random_walk(a.T).T],
}

#: The supports LibCity's DCRNN actually multiplies by (its sparse tensors pair values and positions in
#: different orders; see reversed_row_values). The scaled Laplacian is symmetric, so its pairing is
#: the matrix itself.
DCRNN_LIBCITY_SUPPORTS: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
    "laplacian": DCRNN_SUPPORTS["laplacian"],
    "random_walk": lambda a: [reversed_row_values(random_walk(a)).T],
    "dual_random_walk": lambda a: [reversed_row_values(random_walk(a)).T, reversed_row_values(random_walk(a.T)).T],
}

#: STGCN's ``graph_conv_type`` -> (adjacency, Ks) -> the terms T_k [K, N, N] its graph convolution sums
#: over: Ks Chebyshev polynomials of the scaled Laplacian, or the one first-order matrix (Ks ignored).
STGCN_GRAPH_CONVS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "chebconv": lambda a, ks: chebyshev_polynomials(chebyshev_laplacian(a), ks),
    "gcnconv": lambda a, ks: first_order(a),
}
