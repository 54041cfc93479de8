"""STGCN: spatio-temporal graph convolutional network (Yu et al., IJCAI 2018) as LibCity runs it.

    X [B, T, N, F] -> [B, F, T, N]
      st_conv1: temporal conv (Kt, GLU) -> graph conv (Ks terms) -> temporal conv (Kt, relu) -> LayerNorm
                                                            -> [B, c1, T - 2 (Kt - 1), N]
      st_conv2: the same                                    -> [B, c2, T - 4 (Kt - 1), N]
      output:   temporal conv over all remaining steps (GLU) -> LayerNorm -> 1x1 conv (sigmoid) -> 1x1 conv
                                                            -> [B, output_dim, 1, N]
    -> one step ahead [B, 1, N, output_dim]

``predict`` forecasts output_window steps autoregressively: each prediction joins the input window
(with the true extra features of that step) and the oldest step leaves, as in LibCity. Every layer
works step by step or over a short causal window of steps, so a layer's outputs for the steps the
previous window already held are the same; ``predict`` keeps each layer's last inputs and computes
only the new step's outputs, instead of re-running the whole window output_window times.

Training loss (``stgcn_train_mode``): 'quick' scores only the first step in training and all steps
in evaluation, 'full' all steps always; MSE on inverse-scaled values.

Parameter names and shapes are LibCity's, so its checkpoints load. Activations [B, C, T, N] are
channels-last in memory (as the input's permute makes them), which suits the temporal
convolutions and LayerNorm over (N, C); a graph convolution works on a node-first copy, where all
its terms are one matrix product, and the identity term T_0 is not multiplied at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from libtraffic.model.base import TrafficStateModel
from libtraffic.model.graph import STGCN_GRAPH_CONVS, finite_adjacency
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.registry import lookup

logger = logging.getLogger(__name__)

TRAIN_MODES = ("quick", "full")
# A stage maps [B, C, T, N] to [B, C', T - kernel + 1, N] and looks at ``kernel`` consecutive steps.
Stage = tuple[Callable[[Tensor], Tensor], int]


class Align(nn.Module):
    """Matches channel counts for a residual connection: a 1x1 convolution when shrinking
    (``conv1x1``), zero channels appended when growing. [B, c_in, T, N] -> [B, c_out, T, N]."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        if c_in > c_out:
            self.conv1x1 = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.c_in > self.c_out:
            return self.conv1x1(x)
        return F.pad(x, (0, 0, 0, 0, 0, self.c_out - self.c_in))


class TemporalConv(nn.Module):
    """Causal convolution over kt steps plus the aligned input, then GLU, sigmoid or relu.
    [B, c_in, T, N] -> [B, c_out, T - kt + 1, N]."""

    def __init__(self, kt: int, c_in: int, c_out: int, act: str = "relu") -> None:
        super().__init__()
        self.kt, self.c_out, self.act = kt, c_out, act
        self.align = Align(c_in, c_out)
        self.conv = nn.Conv2d(c_in, 2 * c_out if act == "GLU" else c_out, (kt, 1))

    def forward(self, x: Tensor) -> Tensor:
        x_in = self.align(x[:, :, self.kt - 1:])  # the residual: each output step's own input step
        h = self.conv(x)
        if self.act == "GLU":
            return (h[:, : self.c_out] + x_in) * torch.sigmoid(h[:, self.c_out:])
        return torch.sigmoid(h + x_in) if self.act == "sigmoid" else torch.relu(h + x_in)


class GraphConv(nn.Module):
    """relu(sum_k (T_k x) theta_k + b + x), T_k [K, N, N] the Chebyshev polynomials (or the one
    first-order matrix) acting on the node axis, step by step. [B, c_in, T, N] -> [B, c_out, T, N]."""

    def __init__(self, ks: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.empty(c_in, c_out, ks))
        self.b = nn.Parameter(torch.empty(1, c_out, 1, 1))
        self.align = Align(c_in, c_out)
        # LibCity's initialisation (nn.Linear's rule, fan_in = c_out * ks as torch reads theta).
        init.kaiming_uniform_(self.theta, a=5 ** 0.5)
        fan_in, _ = init._calculate_fan_in_and_fan_out(self.theta)
        init.uniform_(self.b, -1 / fan_in ** 0.5, 1 / fan_in ** 0.5)

    def forward(self, x: Tensor, terms: Tensor, identity_first: bool) -> Tensor:
        """``terms`` [K', N, N] are the T_k to multiply by; with ``identity_first`` T_0 = I is left out
        of them and theta's first slice acts on x itself."""
        b, c, t, n = x.shape
        nodes_first = x.permute(3, 0, 2, 1).contiguous()  # [N, B, T, C]
        hops = (terms.reshape(-1, n) @ nodes_first.view(n, -1)).view(-1, n * b * t, c)  # [K', N*B*T, C]
        inputs = [nodes_first.view(-1, c), *hops] if identity_first else list(hops)
        weights = self.theta.permute(2, 0, 1)  # [K, c_in, c_out]
        h = torch.addmm(self.b.view(1, -1), inputs[0], weights[0])  # b + sum_k input_k theta_k: [N*B*T, c_out]
        for term, weight in zip(inputs[1:], weights[1:]):
            h = torch.addmm(h, term, weight)
        h = h.view(n, b, t, -1).permute(1, 2, 0, 3).contiguous().permute(0, 3, 1, 2)  # [B, c_out, T, N], channels last
        return torch.relu(h + self.align(x))


def _node_layer_norm(ln: nn.LayerNorm, x: Tensor) -> Tensor:
    """LayerNorm over (N, C) at each step: [B, C, T, N] -> [B, C, T, N]."""
    return ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class STConvBlock(nn.Module):
    """Temporal (GLU) -> graph -> temporal (relu) -> LayerNorm over (N, C) -> dropout; channels
    c = (c0, c1, c2). [B, c0, T, N] -> [B, c2, T - 2 (kt - 1), N]."""

    def __init__(self, ks: int, kt: int, n: int, c: list[int], p: float) -> None:
        super().__init__()
        self.tconv1 = TemporalConv(kt, c[0], c[1], "GLU")
        self.sconv = GraphConv(ks, c[1], c[1])
        self.tconv2 = TemporalConv(kt, c[1], c[2])
        self.ln = nn.LayerNorm([n, c[2]])
        self.dropout = nn.Dropout(p)

    def first_half(self, x: Tensor, terms: Tensor, identity_first: bool) -> Tensor:
        return self.sconv(self.tconv1(x), terms, identity_first)  # [B, c1, T - kt + 1, N]

    def second_half(self, x: Tensor) -> Tensor:
        return self.dropout(_node_layer_norm(self.ln, self.tconv2(x)))  # [B, c2, T - kt + 1, N]

    def forward(self, x: Tensor, terms: Tensor, identity_first: bool) -> Tensor:
        return self.second_half(self.first_half(x, terms, identity_first))


class FullyConv(nn.Module):
    """1x1 convolution to the output features (named fc.conv as in LibCity)."""

    def __init__(self, c: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class OutputLayer(nn.Module):
    """Temporal conv over the last t steps (GLU) -> LayerNorm -> 1x1 conv (sigmoid) -> 1x1 conv.
    [B, c, t, N] -> [B, out_dim, 1, N]."""

    def __init__(self, c: int, t: int, n: int, out_dim: int) -> None:
        super().__init__()
        self.tconv1 = TemporalConv(t, c, c, "GLU")
        self.ln = nn.LayerNorm([n, c])
        self.tconv2 = TemporalConv(1, c, c, "sigmoid")
        self.fc = FullyConv(c, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.tconv2(_node_layer_norm(self.ln, self.tconv1(x))))


class STGCN(TrafficStateModel):
    """Predicts [B, output_window, N, output_dim] from [B, input_window, N, feature_dim]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        super().__init__(config, data_feature)
        self.kt = config["Kt"]
        self.drop_prob = config["dropout"]
        mode = config["stgcn_train_mode"].lower()
        self.train_mode = lookup({m: m for m in TRAIN_MODES}, mode, "stgcn_train_mode",
                                 where="config key 'stgcn_train_mode'")
        blocks = _checked_blocks(config, self.feature_dim)
        out_steps = _remaining_steps(config)
        if not 0 <= self.drop_prob < 1:
            raise LibTrafficError(f"dropout must be in [0, 1), got {self.drop_prob}.")

        graph_conv = lookup(STGCN_GRAPH_CONVS, config["graph_conv_type"].lower(), "graph_conv_type",
                            where="config key 'graph_conv_type'")
        terms = torch.from_numpy(graph_conv(finite_adjacency(data_feature["adj_mx"], "STGCN"), config["Ks"]))
        ks = terms.shape[0]  # Ks Chebyshev polynomials, or the one first-order matrix
        logger.info("STGCN: %s graph convolution, %d term(s); %s training mode", config["graph_conv_type"], ks, mode)
        # T_0 of the Chebyshev polynomials is the identity: it is applied as such, not multiplied by.
        self.identity_first = bool(torch.equal(terms[0], torch.eye(self.num_nodes)))
        self.register_buffer("terms", terms[1:] if self.identity_first else terms, persistent=False)

        self.st_conv1 = STConvBlock(ks, self.kt, self.num_nodes, blocks[0], self.drop_prob)
        self.st_conv2 = STConvBlock(ks, self.kt, self.num_nodes, blocks[1], self.drop_prob)
        self.output = OutputLayer(blocks[1][2], out_steps, self.num_nodes, self.output_dim)

    def _stages(self) -> list[Stage]:
        """The network as a chain of causal stages (function, steps it looks at)."""
        graph = {"terms": self.terms, "identity_first": self.identity_first}
        return [(partial(self.st_conv1.first_half, **graph), self.kt), (self.st_conv1.second_half, self.kt),
                (partial(self.st_conv2.first_half, **graph), self.kt), (self.st_conv2.second_half, self.kt),
                (self.output, self.output.tconv1.kt)]

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        h = batch["X"].permute(0, 3, 1, 2)  # [B, F, T, N] (channels-last in memory)
        for stage, _ in self._stages():
            h = stage(h)  # st_conv1 -> [B, c1, T - 2 (Kt - 1), N], st_conv2 -> ..., output -> [B, output_dim, 1, N]
        return h.permute(0, 2, 3, 1)  # [B, 1, N, output_dim]

    def predict(self, batch: Mapping[str, Tensor]) -> Tensor:
        """output_window steps, each prediction fed back: [B, output_window, N, output_dim]."""
        if self.training and self.drop_prob > 0:  # fresh dropout for every window, as LibCity
            return self._predict_rerun(batch)
        stages = self._stages()
        h = batch["X"].permute(0, 3, 1, 2)  # [B, F, T, N]
        history = []  # each stage's last kernel - 1 input steps
        for stage, kernel in stages:
            history.append(h[:, :, h.shape[2] - kernel + 1:])
            h = stage(h)
        preds = [h]  # [B, output_dim, 1, N]
        for i in range(1, self.output_window):
            h = self._next_step(h.permute(0, 2, 3, 1), batch["y"], i - 1).permute(0, 3, 1, 2)  # [B, F, 1, N]
            for j, (stage, _) in enumerate(stages):
                window = torch.cat([history[j], h], dim=2)
                history[j] = window[:, :, 1:]
                h = stage(window)  # the new step only
            preds.append(h)
        return torch.cat(preds, dim=2).permute(0, 2, 3, 1)

    def _predict_rerun(self, batch: Mapping[str, Tensor]) -> Tensor:
        """LibCity's loop: the whole window re-run for every output step."""
        x, preds = batch["X"], []
        for i in range(self.output_window):
            pred = self.forward({"X": x})  # [B, 1, N, output_dim]
            preds.append(pred)
            x = torch.cat([x[:, 1:], self._next_step(pred, batch["y"], i)], dim=1)
        return torch.cat(preds, dim=1)

    def _next_step(self, pred: Tensor, y: Tensor, i: int) -> Tensor:
        """The prediction [B, 1, N, output_dim] with step i's true extra features: [B, 1, N, F]."""
        return torch.cat([pred, y[:, i: i + 1, :, self.output_dim:]], dim=3)

    def calculate_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """MSE on inverse-scaled values; 'quick' mode trains on the first step only."""
        if self.train_mode == "quick" and self.training:
            return self.real_units_loss("mse", batch["y"][:, :1], self.forward(batch))
        return self.real_units_loss("mse", batch["y"], self.predict(batch))


def _checked_blocks(config: Mapping[str, Any], feature_dim: int) -> list[list[int]]:
    """``blocks`` as two [c_in, c_hidden, c_out] lists, the first c_in set to feature_dim (as LibCity)."""
    blocks = config["blocks"]
    shape_ok = (isinstance(blocks, list) and len(blocks) == 2
                and all(isinstance(b, list) and len(b) == 3 and all(isinstance(c, int) and c > 0 for c in b) for b in blocks))
    if not shape_ok:
        raise LibTrafficError(f"STGCN's blocks must be two lists of three positive channel counts, like "
                              f"[[1, 32, 64], [64, 32, 128]]; got {blocks!r}.")
    if blocks[1][0] != blocks[0][2]:
        raise LibTrafficError(f"STGCN's blocks {blocks}: the second block must take the first block's output "
                              f"channels ({blocks[0][2]}) as its first entry, not {blocks[1][0]}.")
    return [[feature_dim, *blocks[0][1:]], list(blocks[1])]


def _remaining_steps(config: Mapping[str, Any]) -> int:
    """Steps left for the output layer after the four Kt-step temporal convolutions."""
    kt, window = config["Kt"], config["input_window"]
    if kt < 1:
        raise LibTrafficError(f"STGCN's Kt must be at least 1, got {kt}.")
    steps = window - 4 * (kt - 1)
    if steps < 1:
        raise LibTrafficError(
            f"STGCN with Kt={kt} needs input_window > 4 * (Kt - 1) = {4 * (kt - 1)} (its two blocks each have two "
            f"temporal convolutions of Kt steps), got input_window {window}. Use a longer --input_window or a "
            f"smaller --Kt (at most {(window - 1) // 4 + 1}).")
    return steps
