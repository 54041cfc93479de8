"""Adjacency matrix from .rel edges with LibCity's options."""

from __future__ import annotations

import numpy as np

from libtraffic.utils.errors import LibTrafficError


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
    mode = set_weight_link_or_dist.lower() or "link"
    init = init_weight_inf_or_zero.lower() or "zero"
    if mode not in ("link", "dist"):
        raise LibTrafficError(f"set_weight_link_or_dist must be 'link' or 'dist', got {set_weight_link_or_dist!r}.")
    if init not in ("inf", "zero"):
        raise LibTrafficError(f"init_weight_inf_or_zero must be 'inf' or 'zero', got {init_weight_inf_or_zero!r}.")
    if mode == "dist" and weights is None:
        raise LibTrafficError("set_weight_link_or_dist is 'dist' but the .rel file has no weight column (weight_col).")
    fill = np.inf if init == "inf" and mode == "dist" else 0.0
    adj = np.full((num_nodes, num_nodes), fill, dtype=np.float32)
    values = weights.astype(np.float32) if mode == "dist" else np.ones(len(origin), dtype=np.float32)
    adj[origin, dest] = values
    if bidir_adj_mx:
        adj[dest, origin] = values
    if calculate_weight_adj:
        finite = adj[~np.isinf(adj)]
        std = finite.std() if finite.size else 0.0
        if std == 0:
            raise LibTrafficError("calculate_weight_adj needs varying distances, but all finite weights are equal.")
        adj = np.exp(-np.square(adj / std)).astype(np.float32)
        adj[adj < weight_adj_epsilon] = 0
    return adj
