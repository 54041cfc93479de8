"""MTGNN: graph WaveNet-like forecaster with a learned sparse graph (Wu et al., KDD 2020), as in LibCity.

    input [B, T, N, F] -> left-padded to the receptive field -> start_conv (1x1) to R channels
    per layer i:  gated dilated inception (kernels 2, 3, 6, 7) -> C channels, shorter in time
                  skip_convs[i] (to S channels, length 1) added to the skip sum
                  mix-hop propagation over the graph A and over A^T (gconv1 + gconv2) -> R channels
                  + residual, layer norm over (channels, nodes, time)
    skipE + skip -> relu -> end_conv_1 -> relu -> end_conv_2 -> [B, output_window, N, 1]

The graph is learned (GraphConstructor: the k strongest edges per node of relu(tanh(a (M1 M2^T -
M2 M1^T)))) or, with buildA_true false, the dataset's adjacency. Training may run on a subset of
nodes ``idx`` (MTGNNExecutor's num_split): the graph, layer norm and predictions then cover only those.

The math is LibCity's; the arrangement is ours, for speed (the numbers agree to float rounding):
tensors are node-major [N, B, L, C] (nodes, batch, time, channels), so a graph hop is one
[N, N] x [N, B*L*C] product, and the 1x1 convolutions and the skip convolutions (whose kernels span
the whole remaining window) are plain matrix products; the two inception convolutions (filter and
gate, four kernels each) run as one convolution of kernel 7 whose shorter kernels are zero-padded
on the left, which computes exactly LibCity's right-aligned, cut outputs; MixProp regroups its
weights so that a hop is a bare product (see MixProp).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from libtraffic.model import loss
from libtraffic.model.base import TrafficStateModel
from libtraffic.utils.errors import LibTrafficError

KERNEL_SET = (2, 3, 6, 7)
KERNEL_SIZE = max(KERNEL_SET)


def time_conv(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int = 1) -> Tensor:
    """A (1, k) convolution over time of node-major x [N, B, L, C] with a Conv2d weight [O, C, 1, k].

    Returns [N, B, L - dilation (k - 1), O]. The input is viewed as channels-last images, no copy.
    """
    nodes, batch, length, channels = x.shape
    images = x.reshape(nodes * batch, 1, length, channels).permute(0, 3, 1, 2)  # [N*B, C, 1, L]
    out = F.conv2d(images, weight, bias, dilation=(1, dilation))                # [N*B, O, 1, L']
    return out.permute(0, 2, 3, 1).reshape(nodes, batch, -1, weight.shape[0])


def whole_window(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A (1, L) Conv2d over a window of exactly L steps, x [N, B, L, C] -> [N, B, O]: one linear map of
    the flattened window (the skip convolutions, whose kernels span what is left of the input)."""
    nodes, batch, length, channels = x.shape
    if conv.kernel_size[1] != length:
        raise ValueError(f"kernel {conv.kernel_size[1]} does not span the window of {length} steps")
    weight = conv.weight[:, :, 0].transpose(1, 2).reshape(conv.out_channels, length * channels)  # (step, channel) order
    return F.linear(x.reshape(nodes, batch, length * channels), weight, conv.bias)


def pointwise(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 1x1 Conv2d on the channels (last dim) of x [..., C_in] -> [..., C_out]."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def propagation_matrix(adj: Tensor) -> Tensor:
    """(A + I) with each row divided by its sum (MixProp's normalisation)."""
    adj = adj + torch.eye(len(adj), dtype=adj.dtype, device=adj.device)
    return adj / adj.sum(1, keepdim=True)


class DilatedInception(nn.Module):
    """Four dilated (1, k) convolutions, k in 2, 3, 6, 7, each with cout / 4 channels, cut to the
    length of the longest kernel's output and concatenated (LibCity's tconv.0 .. tconv.3)."""

    def __init__(self, cin: int, cout: int, dilation_factor: int = 2) -> None:
        super().__init__()
        self.dilation = dilation_factor
        self.tconv = nn.ModuleList(nn.Conv2d(cin, cout // len(KERNEL_SET), (1, k), dilation=(1, dilation_factor))
                                   for k in KERNEL_SET)

    def fused(self) -> tuple[Tensor, Tensor]:
        """(weight [cout, cin, 1, 7], bias [cout]) of one convolution equal to the four, cut and concatenated."""
        weight = torch.cat([F.pad(c.weight, (KERNEL_SIZE - c.weight.shape[-1], 0)) for c in self.tconv])
        return weight, torch.cat([c.bias for c in self.tconv])


class GraphConstructor(nn.Module):
    """The learned graph among nodes ``idx``: [n, n], the subgraph_size largest entries of each row kept."""

    def __init__(self, nnodes: int, k: int, dim: int, alpha: float) -> None:
        super().__init__()
        self.emb1 = nn.Embedding(nnodes, dim)
        self.emb2 = nn.Embedding(nnodes, dim)
        self.lin1 = nn.Linear(dim, dim)
        self.lin2 = nn.Linear(dim, dim)
        self.k = k
        self.alpha = alpha

    def forward(self, idx: Tensor) -> Tensor:
        nodevec1 = torch.tanh(self.alpha * self.lin1(self.emb1(idx)))  # [n, dim]
        nodevec2 = torch.tanh(self.alpha * self.lin2(self.emb2(idx)))
        a = nodevec1 @ nodevec2.t() - nodevec2 @ nodevec1.t()          # antisymmetric: one direction per pair
        adj = F.relu(torch.tanh(self.alpha * a))
        keep = torch.zeros_like(adj).scatter_(1, adj.topk(self.k, dim=1).indices, 1.0)
        return adj * keep


class MixProp(nn.Module):
    """Mix-hop propagation: h_0 = x, h_k = alpha x + (1 - alpha) P h_(k-1); out = mlp([h_0, ..., h_depth]).

    Each h_k is a sum of q_j = ((1 - alpha) P)^j x, j <= k (h_k = q_k + alpha (q_0 + ... + q_(k-1))), so
    the mlp is applied to [q_0, ..., q_depth] with its weights regrouped: W'_j = (1 - alpha) W_j +
    alpha (W_j + ... + W_depth). Same linear map, without the alpha-mixing passes over the hops.
    """

    def __init__(self, c_in: int, c_out: int, gdep: int, alpha: float) -> None:
        super().__init__()
        self.mlp = _Pointwise((gdep + 1) * c_in, c_out)
        self.gdep = gdep
        self.alpha = alpha

    def forward(self, x: Tensor, prop: Tensor) -> Tensor:
        """x [N, B, L, C], prop [N, N] (propagation_matrix) -> [N, B, L, c_out]."""
        step = (1 - self.alpha) * prop
        hops, q = [x], x.reshape(len(x), -1)
        for _ in range(self.gdep):
            q = step @ q                                                   # [N, B*L*C]
            hops.append(q.view_as(x))
        conv = self.mlp.mlp
        weight = conv.weight.view(conv.out_channels, self.gdep + 1, -1)  # [O, hop, C]
        suffix = weight.flip(1).cumsum(1).flip(1)                          # W_j + ... + W_depth
        weight = (1 - self.alpha) * weight + self.alpha * suffix
        return F.linear(torch.cat(hops, dim=-1), weight.flatten(1), conv.bias)


class _Pointwise(nn.Module):
    """Holds a 1x1 Conv2d as ``mlp`` (LibCity's Linear, whence the key mlp.mlp.weight)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.mlp = nn.Conv2d(c_in, c_out, kernel_size=(1, 1))


class LayerNorm(nn.Module):
    """Layer norm over (channels, nodes, time) of each sample; affine weights [C, N, L] of all nodes,
    of which the rows of ``idx`` are used."""

    def __init__(self, normalized_shape: tuple[int, int, int], eps: float = 1e-5, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(normalized_shape))
            self.bias = nn.Parameter(torch.zeros(normalized_shape))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor, idx: Tensor | None) -> Tensor:
        """x [n, B, L, C] node-major -> same; idx None means all nodes."""
        weight = bias = None
        if self.weight is not None:
            weight, bias = (p if idx is None else p[:, idx] for p in (self.weight, self.bias))
            weight, bias = weight.permute(1, 2, 0), bias.permute(1, 2, 0)  # [n, L, C]
        per_sample = x.transpose(0, 1)  # [B, n, L, C]
        return F.layer_norm(per_sample, per_sample.shape[1:], weight, bias, self.eps).transpose(0, 1)


class MTGNN(TrafficStateModel):
    """Outputs [B, output_window, N, 1] from an input window [B, input_window, N, F]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        super().__init__(config, data_feature)
        self.gcn_true = config["gcn_true"]
        self.buildA_true = config["buildA_true"]
        self.gcn_depth = config["gcn_depth"]
        self.dropout = config["dropout"]
        self.layers = config["layers"]
        self.propalpha = config["propalpha"]
        _check_settings(config, self.num_nodes, self.output_dim)
        if self.gcn_true and not self.buildA_true:
            _check_predefined(data_feature["adj_mx"])
        dilation_exponential = config["dilation_exponential"]
        residual, conv = config["residual_channels"], config["conv_channels"]
        skip, end = config["skip_channels"], config["end_channels"]
        self.receptive_field = receptive_field(self.layers, dilation_exponential)
        length = max(self.input_window, self.receptive_field)  # the padded input's length

        self.register_buffer("idx", torch.arange(self.num_nodes), persistent=False)
        adj = torch.as_tensor(data_feature["adj_mx"], dtype=torch.float32)
        self.register_buffer("predefined_A", adj - torch.eye(self.num_nodes), persistent=False)
        # Registered and created in LibCity's order: the state_dict's order, and a seed's initial weights.
        self.filter_convs, self.gate_convs = nn.ModuleList(), nn.ModuleList()
        self.residual_convs, self.skip_convs = nn.ModuleList(), nn.ModuleList()
        self.gconv1, self.gconv2, self.norm = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.start_conv = nn.Conv2d(self.feature_dim, residual, kernel_size=(1, 1))
        self.gc = GraphConstructor(self.num_nodes, config["subgraph_size"], config["node_dim"], config["tanhalpha"])
        self.dilations = []
        dilation, rf_size = 1, 1
        for _ in range(self.layers):
            rf_size += (KERNEL_SIZE - 1) * dilation
            self.dilations.append(dilation)
            self.filter_convs.append(DilatedInception(residual, conv, dilation_factor=dilation))
            self.gate_convs.append(DilatedInception(residual, conv, dilation_factor=dilation))
            self.residual_convs.append(nn.Conv2d(conv, residual, kernel_size=(1, 1)))
            out_length = length - rf_size + 1
            self.skip_convs.append(nn.Conv2d(conv, skip, kernel_size=(1, out_length)))
            if self.gcn_true:
                self.gconv1.append(MixProp(conv, residual, self.gcn_depth, self.propalpha))
                self.gconv2.append(MixProp(conv, residual, self.gcn_depth, self.propalpha))
            self.norm.append(LayerNorm((residual, self.num_nodes, out_length),
                                       elementwise_affine=config["layer_norm_affline"]))
            dilation *= dilation_exponential
        self.end_conv_1 = nn.Conv2d(skip, end, kernel_size=(1, 1))
        self.end_conv_2 = nn.Conv2d(end, self.output_window, kernel_size=(1, 1))
        self.skip0 = nn.Conv2d(self.feature_dim, skip, kernel_size=(1, length))
        self.skipE = nn.Conv2d(residual, skip, kernel_size=(1, length - self.receptive_field + 1))

    @property
    def min_nodes(self) -> int:
        """The fewest nodes a forward pass takes: the learned graph keeps subgraph_size edges per node."""
        return self.gc.k if self.gcn_true and self.buildA_true else 1

    def graph(self, idx: Tensor | None) -> Tensor:
        """The adjacency among nodes idx (all when None): learned, or the dataset's minus self-loops."""
        if self.buildA_true:
            return self.gc(self.idx if idx is None else idx)
        return self.predefined_A if idx is None else self.predefined_A[idx][:, idx]

    def forward(self, batch: Mapping[str, Tensor], idx: Tensor | None = None) -> Tensor:
        """batch['X'] [B, T_in, n, F] holds the nodes idx (all when None) -> [B, T_out, n, 1]."""
        x = batch["X"].permute(2, 0, 1, 3)                                # [n, B, T_in, F]
        if self.input_window < self.receptive_field:
            x = F.pad(x, (0, 0, self.receptive_field - self.input_window, 0))  # [n, B, L, F]
        if self.gcn_true:
            adj = self.graph(idx)
            props = propagation_matrix(adj), propagation_matrix(adj.t())   # [n, n] each
        skip = whole_window(F.dropout(x, self.dropout, self.training), self.skip0)  # [n, B, S]
        x = time_conv(x, self.start_conv.weight, self.start_conv.bias)    # [n, B, L, R]
        for i in range(self.layers):
            residual = x
            filt_w, filt_b = self.filter_convs[i].fused()
            gate_w, gate_b = self.gate_convs[i].fused()
            both = time_conv(x, torch.cat([filt_w, gate_w]), torch.cat([filt_b, gate_b]), self.dilations[i])
            filt, gate = both.chunk(2, dim=-1)                            # [n, B, L_i, C] each
            x = F.dropout(torch.tanh(filt) * torch.sigmoid(gate), self.dropout, self.training)
            skip = skip + whole_window(x, self.skip_convs[i])
            if self.gcn_true:
                x = self.gconv1[i](x, props[0]) + self.gconv2[i](x, props[1])   # [n, B, L_i, R]
            else:
                x = pointwise(x, self.residual_convs[i])
            x = x + residual[:, :, -x.shape[2]:]
            x = self.norm[i](x, idx)
        skip = whole_window(x, self.skipE) + skip                         # [n, B, S]
        x = F.relu(pointwise(F.relu(skip), self.end_conv_1))              # [n, B, E]
        x = pointwise(x, self.end_conv_2)                                 # [n, B, T_out]
        return x.permute(1, 2, 0).unsqueeze(-1)                           # [B, T_out, n, 1]

    def predict(self, batch: Mapping[str, Tensor], idx: Tensor | None = None) -> Tensor:
        return self.forward(batch, idx)

    def calculate_loss(self, batch: Mapping[str, Tensor], idx: Tensor | None = None,
                       task_level: int | None = None) -> Tensor:
        """Masked MAE (zero readings ignored) in data units, over nodes idx (all when None) and the
        first task_level output steps (all when None): LibCity's MTGNN loss under its curriculum."""
        x, y = batch["X"], batch["y"]
        if idx is not None:
            x, y = x[:, :, idx], y[:, :, idx]
        steps = slice(None, task_level)
        y_pred = self.scaler.inverse_transform(self.predict({"X": x}, idx)[:, steps])
        y_true = self.scaler.inverse_transform(y[:, steps, :, : self.output_dim])
        return loss.TRAIN_LOSSES["masked_mae"](y_pred, y_true)


def receptive_field(layers: int, dilation_exponential: int) -> int:
    """Input steps one output sees: 1 + 6 (1 + d + ... + d^(layers-1)) for kernel 7.

    LibCity writes output_dim for the 1 (and this model needs output_dim 1).
    """
    return 1 + (KERNEL_SIZE - 1) * sum(dilation_exponential ** j for j in range(layers))


def _check_settings(config: Mapping[str, Any], num_nodes: int, output_dim: int) -> None:
    """Settings that would otherwise fail inside the forward pass with an opaque torch error."""
    if output_dim != 1:
        raise LibTrafficError(
            f"MTGNN predicts one value per sensor and step (LibCity's MTGNN), but this dataset has output_dim "
            f"{output_dim} (data_col / output_dim in its config.json). Use a dataset with one target column.")
    for key, least in (("layers", 1), ("gcn_depth", 0), ("dilation_exponential", 1), ("residual_channels", 1),
                       ("skip_channels", 1), ("end_channels", 1), ("node_dim", 1)):
        if config[key] < least:
            raise LibTrafficError(f"MTGNN: {key} must be at least {least}, got {config[key]}.")
    if config["conv_channels"] < 4 or config["conv_channels"] % len(KERNEL_SET):
        raise LibTrafficError(
            f"MTGNN: conv_channels must be a positive multiple of 4 (the four inception kernels share them), "
            f"got {config['conv_channels']}.")
    if not 0 <= config["dropout"] < 1:
        raise LibTrafficError(f"MTGNN: dropout must be in [0, 1), got {config['dropout']}.")
    if config["gcn_true"] and config["buildA_true"] and not 1 <= config["subgraph_size"] <= num_nodes:
        raise LibTrafficError(
            f"MTGNN: subgraph_size {config['subgraph_size']} (edges kept per sensor in the learned graph) must be "
            f"between 1 and the number of sensors ({num_nodes}). Use --subgraph_size {num_nodes} or less.")


def _check_predefined(adj_mx: Any) -> None:
    """With buildA_true false MixProp divides by the row sums of the dataset's adjacency and of its transpose."""
    adj = torch.as_tensor(adj_mx, dtype=torch.float32)
    empty = ((adj.sum(1) == 0) | (adj.sum(0) == 0)).nonzero().flatten().tolist()
    if empty:
        raise LibTrafficError(
            f"MTGNN with buildA_true false propagates over the dataset's adjacency, but sensor(s) at index "
            f"{', '.join(map(str, empty[:10]))}{' ...' if len(empty) > 10 else ''} have no edge and no self-loop "
            "in it (a zero row or column), which would divide by zero. Use --buildA_true true, or a .rel file "
            "with those sensors' edges.")
