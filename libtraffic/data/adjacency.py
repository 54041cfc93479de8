"""Adjacency matrix from .rel edges with LibCity's options."""

from __future__ import annotations

import numpy as np

from libtraffic.utils.errors import LibTrafficError


def check_options(set_weight_link_or_dist: str, init_weight_inf_or_zero: str) -> tuple[str, str]:
    """The two adjacency options, lower-cased (empty: LibCity's defaults link / zero); a misspelt one
    is a settings mistake, refused for every model (whether or not it reads the graph)."""
    mode = set_weight_link_or_dist.lower() or "link"
    init = init_weight_inf_or_zero.lower() or "zero"
    if mode not in ("link", "dist"):
        raise LibTrafficError(f"set_weight_link_or_dist must be 'link' or 'dist', got {set_weight_link_or_dist!r}.")
    if init not in ("inf", "zero"):
        raise LibTrafficError(f"init_weight_inf_or_zero must be 'inf' or 'zero', got {init_weight_inf_or_zero!r}.")
    return mode, init


def build_adjacency(
    num_nodes: int, origin: np.ndarray, dest: np.ndarray, weights: np.ndarray | None,
    init_weight_inf_or_zero: str, set_weight_link_or_dist: str, bidir_adj_mx: bool,
    calculate_weight_adj: bool, weight_adj_epsilon: float,
) -> np.ndarray:
    """(N, N) float32 matrix.

    'link' puts 1 on every edge; 'dist' puts the edge weight (needs a weight column). With
    'inf' (and 'dist') absent pairs start at +inf, else 0. calculate_weight_adj applies the
    Gaussian kernel exp(-(d / std)^2) over the finite entries and zeroes values below epsilon.
    """
    mode, init = check_options(set_weight_link_or_dist, init_weight_inf_or_zero)
    if mode == "dist" and weights is None:
        raise LibTrafficError("set_weight_link_or_dist is 'dist' but the .rel file has no weight column (weight_col).")
    fill = np.inf if init == "inf" and mode == "dist" else 0.0
    adj = np.full((num_nodes, num_nodes), fill, dtype=np.float32)
    values = weights.astype(np.float32) if mode == "dist" else np.ones(len(origin), dtype=np.float32)
    rows, cols = np.asarray(origin), np.asarray(dest)
    if bidir_adj_mx:  # row k writes (o, d) then (d, o)
        rows, cols = np.stack([rows, cols], 1).ravel(), np.stack([cols, rows], 1).ravel()
        values = np.repeat(values, 2)
    rows, cols, values = _last_write(rows, cols, values, num_nodes)
    adj[rows, cols] = values
    if calculate_weight_adj:
        finite = adj[~np.isinf(adj)]
        std = finite.std() if finite.size else 0.0
        if std == 0:
            raise LibTrafficError(
                f"calculate_weight_adj needs varying distances, but the {finite.size} finite weight(s) of the "
                f"{num_nodes}-sensor graph are all equal (or there are none): the Gaussian kernel divides by their "
                "spread. Set --calculate_weight_adj false, or give the .rel file the distances between sensors.")
        adj = np.exp(-np.square(adj / std)).astype(np.float32)
        adj[adj < weight_adj_epsilon] = 0
    return adj


def _last_write(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, num_nodes: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The writes that stand when they are applied in order (LibCity loops over the .rel rows): for
    a cell written more than once, its last value. A repeated index in one NumPy assignment has no
    guaranteed order, and with bidir_adj_mx a pair listed in both directions must end symmetric."""
    cells = rows.astype(np.int64) * num_nodes + cols
    _, first_from_end = np.unique(cells[::-1], return_index=True)
    keep = len(cells) - 1 - first_from_end
    return rows[keep], cols[keep], values[keep]
