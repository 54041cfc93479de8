"""AGCRN: adaptive graph convolutional recurrent network (Bai et al., NeurIPS 2020), as in LibCity.

Each node n has a learned embedding e_n (D numbers). They give the graph and the weights:

    S = softmax_rows(relu(E E^T))                 the adaptive adjacency, [N, N]
    supports T_0 = I, T_1 = S, T_k = 2 S T_{k-1} - T_{k-2}   (cheb_order of them)
    W_n = sum_d e_nd weights_pool_d,  b_n = e_n bias_pool     per-node weights [K, C_in, C_out]
    AVWGCN(x)_n = sum_k (T_k x)_n W_n,k + b_n

A GRU whose two linear maps are AVWGCNs (gate -> z, r; update -> candidate) runs over the input
window, layer after layer; a 1x(hidden) convolution maps the last layer's final state to all
output_window steps at once.

The math is LibCity's; the arrangement is ours, for speed (the numbers agree to float rounding):
  * the supports and every per-node weight tensor are built once per forward, not once per step;
  * tensors are node-major [N, B, C], so T_k x is one [N, N] x [N, B*C] product and the per-node
    weights one batched product over nodes;
  * the graph convolution is linear in its input, so the part of the input that does not depend
    on the state (the layer's input sequence) is convolved for all steps at once before the
    recurrence; each step convolves only the state. T_0 = I is applied as a copy, not a product.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from libtraffic.model.base import TrafficStateModel
from libtraffic.utils.errors import LibTrafficError


def chebyshev_supports(embeddings: Tensor, order: int) -> Tensor:
    """T_1 .. T_{order-1} of the adaptive adjacency of ``embeddings`` [N, D]: [order-1, N, N].

    T_0 = I is left out; callers use the input itself for it.
    """
    adjacency = F.softmax(F.relu(embeddings @ embeddings.t()), dim=1)
    terms = [torch.eye(len(adjacency), dtype=adjacency.dtype, device=adjacency.device), adjacency]
    for _ in range(2, order):
        terms.append(2 * adjacency @ terms[-1] - terms[-2])
    return torch.stack(terms[1:order])


def graph_features(x: Tensor, supports: Tensor) -> Tensor:
    """[x, T_1 x, ..., T_{K-1} x] along the channels: x [N, M, C] -> [N, M, K*C].

    supports: [K-1, N, N] (without T_0 = I). The channel order (k, c) is that of weights_pool.
    """
    nodes, rest, channels = x.shape
    mixed = (supports.reshape(-1, nodes) @ x.reshape(nodes, -1)).reshape(-1, nodes, rest, channels)
    return torch.cat([x, *mixed.unbind(0)], dim=-1)


class AVWGCN(nn.Module):
    """Adaptive graph convolution with node-specific weights drawn from shared pools.

    weights_pool [D, K, C_in, C_out], bias_pool [D, C_out] (LibCity's names and shapes).
    """

    def __init__(self, dim_in: int, dim_out: int, cheb_k: int, embed_dim: int) -> None:
        super().__init__()
        self.weights_pool = nn.Parameter(torch.empty(embed_dim, cheb_k, dim_in, dim_out))
        self.bias_pool = nn.Parameter(torch.empty(embed_dim, dim_out))

    def node_weights(self, embeddings: Tensor, split: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per-node weights of input channels [0, split) and [split, C_in), and the bias.

        Returns W_in [N, K*split, C_out], W_rest [N, K*(C_in-split), C_out], b [N, 1, C_out].
        """
        weights = torch.einsum("nd,dkio->nkio", embeddings, self.weights_pool)  # [N, K, C_in, C_out]
        nodes, _, _, dim_out = weights.shape
        w_in = weights[:, :, :split].reshape(nodes, -1, dim_out)
        w_rest = weights[:, :, split:].reshape(nodes, -1, dim_out)
        return w_in, w_rest, (embeddings @ self.bias_pool).unsqueeze(1)


class AGCRNCell(nn.Module):
    """GRU cell over a graph: gate AVWGCN(C_in + H -> 2H) gives z, r; update AVWGCN(C_in + H -> H)."""

    def __init__(self, node_num: int, dim_in: int, dim_out: int, cheb_k: int, embed_dim: int) -> None:
        super().__init__()
        self.node_num = node_num
        self.dim_in = dim_in
        self.hidden_dim = dim_out
        self.gate = AVWGCN(dim_in + dim_out, 2 * dim_out, cheb_k, embed_dim)
        self.update = AVWGCN(dim_in + dim_out, dim_out, cheb_k, embed_dim)

    def run(self, inputs: Tensor, embeddings: Tensor, supports: Tensor) -> Tensor:
        """The cell over a sequence from a zero state: inputs [T, N, B, C_in] -> states [T, N, B, H]."""
        steps, nodes, batch, _ = inputs.shape
        hidden = self.hidden_dim
        gate_x, gate_h, gate_b = self.gate.node_weights(embeddings, self.dim_in)
        update_x, update_h, update_b = self.update.node_weights(embeddings, self.dim_in)
        # The input terms (and biases) of both convolutions, all steps at once: per step [N, B, 2H], [N, B, H].
        x_feat = graph_features(inputs.permute(1, 0, 2, 3).reshape(nodes, steps * batch, -1), supports)
        gate_terms = torch.baddbmm(gate_b, x_feat, gate_x).reshape(nodes, steps, batch, -1).unbind(1)
        update_terms = torch.baddbmm(update_b, x_feat, update_x).reshape(nodes, steps, batch, -1).unbind(1)
        states = []
        state = None  # the zero state: its graph convolution is 0
        for gate_pre, update_pre in zip(gate_terms, update_terms):
            if state is None:
                z, r = torch.sigmoid(gate_pre).split(hidden, dim=-1)
                state = (1 - r) * torch.tanh(update_pre)
            else:
                z, r = torch.sigmoid(torch.baddbmm(gate_pre, graph_features(state, supports), gate_h)).split(hidden, dim=-1)
                candidate = torch.tanh(torch.baddbmm(update_pre, graph_features(z * state, supports), update_h))
                state = r * state + (1 - r) * candidate
            states.append(state)
        return torch.stack(states)


class AVWDCRNN(nn.Module):
    """Stacked AGCRN cells (LibCity's name): the first reads the features, the others the states below."""

    def __init__(self, num_nodes: int, feature_dim: int, hidden_dim: int, cheb_k: int, embed_dim: int,
                 num_layers: int) -> None:
        super().__init__()
        dims = [feature_dim] + [hidden_dim] * (num_layers - 1)
        self.dcrnn_cells = nn.ModuleList(AGCRNCell(num_nodes, d, hidden_dim, cheb_k, embed_dim) for d in dims)

    def forward(self, x: Tensor, embeddings: Tensor, supports: Tensor) -> Tensor:
        """x [T, N, B, F] -> the last layer's states [T, N, B, H]."""
        for cell in self.dcrnn_cells:
            x = cell.run(x, embeddings, supports)
        return x


class AGCRN(TrafficStateModel):
    """Outputs [B, output_window, N, output_dim] from an input window [B, input_window, N, F]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        super().__init__(config, data_feature)
        self.hidden_dim = config["rnn_units"]
        self.embed_dim = config["embed_dim"]
        self.cheb_k = config["cheb_order"]
        _check_settings(config)
        # Created in LibCity's order (embeddings, cells, end_conv) so a seed gives LibCity's initial weights.
        self.node_embeddings = nn.Parameter(torch.randn(self.num_nodes, self.embed_dim))
        self.encoder = AVWDCRNN(self.num_nodes, self.feature_dim, self.hidden_dim, self.cheb_k, self.embed_dim,
                                config["num_layers"])
        self.end_conv = nn.Conv2d(1, self.output_window * self.output_dim, kernel_size=(1, self.hidden_dim))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            else:
                nn.init.uniform_(p)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = batch["X"]                                                # [B, T_in, N, F]
        batch_size = x.shape[0]
        supports = chebyshev_supports(self.node_embeddings, self.cheb_k)  # [K-1, N, N]
        states = self.encoder(x.permute(1, 2, 0, 3), self.node_embeddings, supports)  # [T_in, N, B, H]
        # end_conv is a (1 x H) kernel over the last state: a linear map H -> T_out * output_dim.
        out = F.linear(states[-1], self.end_conv.weight.flatten(1), self.end_conv.bias)  # [N, B, T_out*C]
        out = out.reshape(self.num_nodes, batch_size, self.output_window, self.output_dim)
        return out.permute(1, 2, 0, 3)                                # [B, T_out, N, C]


def _check_settings(config: Mapping[str, Any]) -> None:
    for key, least in (("cheb_order", 2), ("num_layers", 1), ("rnn_units", 1), ("embed_dim", 1)):
        if config[key] < least:
            why = " (AGCRN's supports are I and the adaptive graph at least)" if key == "cheb_order" else ""
            raise LibTrafficError(f"AGCRN: {key} must be at least {least}{why}, got {config[key]}.")
