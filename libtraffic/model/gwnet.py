"""GWNET: Graph WaveNet (Wu et al., IJCAI 2019) as LibCity builds and trains it.

    X [B, L, N, F] --pad time on the left to the receptive field R--> [B, R, N, F]
      start_conv (1x1)                                   -> h [., C]     C = residual_channels
      blocks x layers, dilation 1, 2, 4, ... per block:
        z = tanh(filter_conv(h)) * sigmoid(gate_conv(h))     dilated causal convolution over time
        skip += skip_conv(z)                                 1x1, on the steps that reach the output
        h = gconv(z, supports) (or residual_conv(z)) + h     graph convolution, residual connection
        h = bn(h)
      relu(skip) -> end_conv_1 (1x1) -> relu -> end_conv_2 (1x1) -> [B, output_window, N, T_end]

With LibCity's sizing T_end = output_dim, so a prediction is [B, output_window, N, output_dim].

Parameter and buffer names and shapes are LibCity's, so its checkpoints load. Inside, activations
are node-first and channels-last, [N, B, T, C]: every convolution is then one matrix product
over the channel axis, and a graph convolution one product over the node axis for the whole
batch. The weights keep nn.Conv2d's layout; the classes below only change how they are applied.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from libtraffic.model.base import TrafficStateModel
from libtraffic.model.graph import GWNET_SUPPORTS, finite_adjacency
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.registry import lookup

logger = logging.getLogger(__name__)

#: Rank of the adaptive adjacency's node embeddings (nodevec1 [N, 10], nodevec2 [10, N]).
EMBEDDING_RANK = 10


class TimeConv(nn.Conv2d):
    """A (1, k) convolution over time with nn.Conv2d's parameters, applied to [..., T, C_in] input.

    Output step t is sum_j W[:, :, 0, j] x[t + j * dilation] + bias: k shifted views side by side,
    one matrix product. [..., T, C_in] -> [..., T - dilation * (k - 1), C_out].
    """

    def forward(self, x: Tensor) -> Tensor:
        k, dilation = self.kernel_size[1], self.dilation[1]
        steps = x.shape[-2] - dilation * (k - 1)
        taps = x if k == 1 else torch.cat([x[..., j * dilation: j * dilation + steps, :] for j in range(k)], -1)
        weight = self.weight.squeeze(2).transpose(1, 2).reshape(self.out_channels, -1)  # [C_out, k * C_in]
        return F.linear(taps, weight, self.bias)


class ChannelsLastBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the last axis of [..., C] input (statistics over all other axes)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1], 1, 1)).view(x.shape)


class ChannelMix(nn.Module):
    """A 1x1 convolution held as ``mlp`` (LibCity's Linear, so the weights are named mlp.mlp.*)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.mlp = TimeConv(c_in, c_out, kernel_size=(1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class GraphConv(nn.Module):
    """Diffusion convolution: [x, A1 x, A1^2 x, A2 x, ...] (``order`` hops per support) mixed by a 1x1
    convolution, then dropout. A hop sends node v's features along A[v, w] to node w."""

    def __init__(self, c_in: int, c_out: int, dropout: float, support_len: int, order: int = 2) -> None:
        super().__init__()
        self.mlp = ChannelMix((order * support_len + 1) * c_in, c_out)
        self.dropout = dropout
        self.order = order

    def forward(self, x: Tensor, supports: Tensor) -> Tensor:
        """x [N, B, T, C], supports [K, N, N] -> [N, B, T, c_out]."""
        n, b, t, c = x.shape
        k = supports.shape[0]
        flat = x.reshape(n, b * t * c)
        hop = (supports.transpose(1, 2).reshape(k * n, n) @ flat).view(k, n, -1)  # all supports at once
        hops = [hop]
        for _ in range(1, self.order):
            hop = torch.bmm(supports.transpose(1, 2), hop)  # support k on its own chain
            hops.append(hop)
        # LibCity's channel order: x, then support by support its hops 1..order.
        blocks = [x] + [hops[j][i].view(n, b, t, c) for i in range(k) for j in range(self.order)]
        h = torch.stack(blocks, dim=3).reshape(n, b, t, -1)  # [N, B, T, (1 + K * order) * C]
        return F.dropout(self.mlp(h), self.dropout, training=self.training)


def _layers_per_block(config: Mapping[str, Any]) -> int:
    """``layers``, or with ``apt_layer`` LibCity's choice: the count whose receptive field best fits
    the input window, round(log2((input_window - 1) / (blocks * (kernel_size - 1)) + 1))."""
    if not config["apt_layer"]:
        return config["layers"]
    if config["kernel_size"] < 2:
        raise LibTrafficError(f"GWNET's apt_layer needs kernel_size >= 2, got {config['kernel_size']}; "
                              "use --apt_layer false --layers N for 1x1 temporal kernels.")
    span = (config["input_window"] - 1) / (config["blocks"] * (config["kernel_size"] - 1))
    layers = int(np.round(np.log(span + 1) / np.log(2)))
    if layers < 1:
        raise LibTrafficError(
            f"GWNET's apt_layer gives 0 layers per block for input_window {config['input_window']}, blocks "
            f"{config['blocks']} and kernel_size {config['kernel_size']}: the window is too short. Use a longer "
            "--input_window, fewer --blocks, or --apt_layer false --layers N.")
    return layers


def _check_sizes(config: Mapping[str, Any]) -> None:
    for key in ("blocks", "layers", "kernel_size", "residual_channels", "dilation_channels", "skip_channels",
                "end_channels"):
        if config[key] < 1:
            raise LibTrafficError(f"GWNET's {key} must be a positive integer, got {config[key]}.")
    if not 0 <= config["dropout"] < 1:
        raise LibTrafficError(f"dropout must be in [0, 1), got {config['dropout']}.")


class GWNET(TrafficStateModel):
    """Graph WaveNet; predicts [B, output_window, N, output_dim] from [B, input_window, N, feature_dim]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        _check_sizes(config)
        super().__init__(config, data_feature)
        self.blocks = config["blocks"]
        self.layers = _layers_per_block(config)
        if config["apt_layer"]:
            logger.info("GWNET: apt_layer sets layers per block to %d", self.layers)
        self.gcn_bool = config["gcn_bool"]
        self.addaptadj = config["addaptadj"]
        self.aptonly = config["aptonly"]
        residual, dilation = config["residual_channels"], config["dilation_channels"]
        skip, kernel = config["skip_channels"], config["kernel_size"]

        self.filter_convs, self.gate_convs = nn.ModuleList(), nn.ModuleList()
        self.residual_convs, self.skip_convs = nn.ModuleList(), nn.ModuleList()
        self.bn, self.gconv = nn.ModuleList(), nn.ModuleList()
        # Created in LibCity's order, so that a seed draws LibCity's initial weights.
        self.start_conv = TimeConv(self.feature_dim, residual, kernel_size=(1, 1))
        # Adaptive adjacency softmax(relu(nodevec1 @ nodevec2)); LibCity's randomadj false starts it
        # from the SVD of the first fixed support.
        self.adaptive = self.gcn_bool and self.addaptadj
        needs_graph = not self.aptonly or (self.adaptive and not config["randomadj"])
        fixed = _fixed_supports(config["adjtype"], data_feature["adj_mx"], needs_graph)  # [K, N, N]
        if self.adaptive:
            init = _random_embeddings(self.num_nodes) if config["randomadj"] else _svd_embeddings(fixed[0])
            self.nodevec1, self.nodevec2 = (nn.Parameter(e) for e in init)
        used = fixed[:0] if self.aptonly else fixed  # aptonly: only the adaptive support
        self.register_buffer("supports", used, persistent=False)
        support_len = len(used) + self.adaptive
        # The graph convolution runs when there is any support; otherwise a 1x1 residual convolution.
        self.use_graph = self.gcn_bool and support_len > 0

        self.receptive_field = self.output_dim  # LibCity's sizing: the output keeps output_dim steps
        for _ in range(self.blocks):
            for i in range(self.layers):
                d = 2 ** i
                self.filter_convs.append(TimeConv(residual, dilation, kernel_size=(1, kernel), dilation=d))
                self.gate_convs.append(TimeConv(residual, dilation, kernel_size=(1, kernel), dilation=d))
                self.residual_convs.append(TimeConv(dilation, residual, kernel_size=(1, 1)))
                self.skip_convs.append(TimeConv(dilation, skip, kernel_size=(1, 1)))
                self.bn.append(ChannelsLastBatchNorm(residual))
                if self.gcn_bool:
                    self.gconv.append(GraphConv(dilation, residual, config["dropout"], support_len))
                self.receptive_field += d * (kernel - 1)
        self.end_conv_1 = TimeConv(skip, config["end_channels"], kernel_size=(1, 1))
        self.end_conv_2 = TimeConv(config["end_channels"], self.output_window, kernel_size=(1, 1))
        logger.info("GWNET: receptive field %d steps", self.receptive_field)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = batch["X"]  # [B, L, N, F]
        steps = max(x.shape[1] + 1, self.receptive_field)  # LibCity pads one step, then up to R
        x = F.pad(x.permute(2, 0, 1, 3), (0, 0, steps - x.shape[1], 0))  # [N, B, steps, F], zeros first
        h = self.start_conv(x)  # [N, B, steps, C]
        end_steps = steps - (self.receptive_field - self.output_dim)
        supports = self._supports()  # [K, N, N]
        skip = 0
        for i in range(self.blocks * self.layers):
            residual = h  # [N, B, T, C]
            z = torch.tanh(self.filter_convs[i](h)) * torch.sigmoid(self.gate_convs[i](h))  # [N, B, T', C]
            # A 1x1 convolution acts step by step: only the last end_steps steps reach the output.
            skip = self.skip_convs[i](z[:, :, -end_steps:]) + skip  # [N, B, end_steps, skip_channels]
            h = self.gconv[i](z, supports) if self.use_graph else self.residual_convs[i](z)  # [N, B, T', C]
            h = self.bn[i](h + residual[:, :, -h.shape[2]:])
        out = self.end_conv_2(F.relu(self.end_conv_1(F.relu(skip))))  # [N, B, end_steps, output_window]
        return out.permute(1, 3, 0, 2)  # [B, output_window, N, end_steps]

    def _supports(self) -> Tensor:
        """The fixed supports and, when learnt, the adaptive one: [K, N, N]."""
        if not self.adaptive:
            return self.supports
        adaptive = F.softmax(F.relu(self.nodevec1 @ self.nodevec2), dim=1)
        return torch.cat([self.supports, adaptive.unsqueeze(0)])

    def calculate_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Masked MAE (zero readings ignored) on inverse-scaled values, as LibCity's GWNET."""
        return self.real_units_loss("masked_mae", batch["y"], self.predict(batch))


def _fixed_supports(adjtype: str, adj_mx: np.ndarray, needed: bool) -> Tensor:
    """[K, N, N] supports of ``adjtype``; when not ``needed`` (aptonly) only the name is checked."""
    build = lookup(GWNET_SUPPORTS, adjtype, "adjtype", where="config key 'adjtype'")
    if not needed:
        return torch.zeros(0, len(adj_mx), len(adj_mx))
    return torch.from_numpy(np.stack(build(finite_adjacency(adj_mx, "GWNET"))).astype(np.float32))


def _random_embeddings(num_nodes: int) -> tuple[Tensor, Tensor]:
    return torch.randn(num_nodes, EMBEDDING_RANK), torch.randn(EMBEDDING_RANK, num_nodes)


def _svd_embeddings(support: Tensor) -> tuple[Tensor, Tensor]:
    """U_r sqrt(S_r) and sqrt(S_r) V_r^T of the support's leading r = 10 singular triplets."""
    u, s, vh = torch.linalg.svd(support, full_matrices=False)
    root = torch.diag(s[:EMBEDDING_RANK].sqrt())
    return u[:, :EMBEDDING_RANK] @ root, root @ vh[:EMBEDDING_RANK]
