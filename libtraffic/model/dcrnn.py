"""DCRNN: diffusion convolutional recurrent neural network (Li et al., ICLR 2018), as in LibCity.

A diffusion convolution of a graph signal X [N, C] with supports S_1 .. S_m (filter_type) and
max_diffusion_step K stacks the terms

    X,  S_1 X0, 2 S_1 (S_1 X0) - X0, ...  (K terms per support, each from the two before it)

where X0 starts as X and, after each support, becomes that support's second-to-last term (the
recursion of the authors' code, kept by LibCity), and mixes the m K + 1 terms with one weight
matrix [C * (m K + 1), C_out] whose row c * (m K + 1) + k weighs term k of channel c.

A DCGRU cell is a GRU whose two linear maps are diffusion convolutions of [x, h]:

    r, u = sigmoid(gconv_fn([x, h]))          (_fn: C_in + H -> 2H, bias starting at 1)
    c = tanh(gconv([x, r * h]))               (_gconv: C_in + H -> H, bias starting at 0)
    h' = u h + (1 - u) c

The encoder runs num_rnn_layers cells over the input window from zero states; the decoder starts
from the encoder's final states and a zero input, and feeds each step's projected output (H -> 1
per node) to the next step, or, with curriculum learning while training, the true value with
probability cl_decay_steps / (cl_decay_steps + exp(batches_seen / cl_decay_steps)).

Parameter names and shapes are LibCity's, so its checkpoints load. The arithmetic is arranged for
speed (the numbers agree to float rounding):
  * tensors are node-major [N, B, C], so a diffusion hop is one product S @ [N, B*C], done with a
    sparse CSR matrix when the graph is sparse (its transpose kept for the backward pass);
  * the convolution is linear, so the x and h parts are diffused and weighted separately: x once
    per step for both of a cell's convolutions, and in the encoder for all steps at once, layer
    by layer, before the recurrence; a zero state contributes nothing and is skipped.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from libtraffic.model.base import TrafficStateModel
from libtraffic.model.graph import DCRNN_LIBCITY_SUPPORTS, DCRNN_SUPPORTS, finite_adjacency
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.registry import lookup

#: Above this share of nonzero entries a support is multiplied as a dense matrix (faster on the CPU).
DENSE_ABOVE = 0.2


class _Hop(torch.autograd.Function):
    """One diffusion hop with a fixed support S (sparse or dense), in one product: S x1, or
    2 S x1 - x0 when x0 is given. ``mats`` = (S, S^T, 2 S^T), the last two for the gradient of x1."""

    @staticmethod
    def forward(ctx: Any, x1: Tensor, x0: Tensor | None, mats: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        ctx.grad_mat = mats[1] if x0 is None else mats[2]
        if x0 is None:
            return torch.mm(mats[0], x1)
        return torch.addmm(x0, mats[0], x1, beta=-1, alpha=2)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        return torch.mm(ctx.grad_mat, grad), -grad if ctx.needs_input_grad[1] else None, None


class Diffusion:
    """The diffusion terms of node-major signals for one forward pass: supports [m, N, N] (dense),
    multiplied as CSR matrices when sparse."""

    def __init__(self, supports: Tensor, max_diffusion_step: int) -> None:
        self.steps = max_diffusion_step
        self.sparse = bool(supports.numel()) and (supports != 0).float().mean().item() <= DENSE_ABOVE
        convert = _csr if self.sparse else (lambda m: m)
        # (S, S^T, 2 S^T) per support: a hop, and the gradient of a first and of a later hop.
        self.mats = [tuple(convert(m) for m in (s, s.t().contiguous(), 2 * s.t())) for s in supports]

    @property
    def num_terms(self) -> int:
        return len(self.mats) * self.steps + 1

    def terms(self, x: Tensor) -> Tensor:
        """x [N, *rest, C] -> its terms [N, *rest, K, C], K = num_terms, in LibCity's order."""
        flat = x.reshape(x.shape[0], -1)
        terms, x0 = [flat], flat
        if self.steps > 0:
            for mats in self.mats:
                x1 = _Hop.apply(x0, None, mats)
                terms.append(x1)
                for _ in range(2, self.steps + 1):
                    x2 = _Hop.apply(x1, x0, mats)  # 2 S x1 - x0
                    terms.append(x2)
                    x1, x0 = x2, x1
        nodes, channels = x.shape[0], x.shape[-1]
        stacked = torch.stack([term.view(nodes, -1, channels) for term in terms], dim=2)  # [N, rest, K, C]
        return stacked.view(*x.shape[:-1], len(terms), channels)


def _csr(matrix: Tensor) -> Tensor:
    with warnings.catch_warnings():  # torch calls its CSR support beta; products with it are what we use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return matrix.to_sparse_csr()


class GCONV(nn.Module):
    """A diffusion convolution of [x, h] (C_in + H channels) to C_out channels; weight [(C_in + H) K, C_out]
    and biases [C_out] are LibCity's (xavier-normal weight, constant bias)."""

    def __init__(self, num_terms: int, input_dim: int, hid_dim: int, output_dim: int, bias_start: float) -> None:
        super().__init__()
        self.num_terms = num_terms
        self.input_dim = input_dim
        self.weight = nn.Parameter(torch.empty((input_dim + hid_dim) * num_terms, output_dim))
        self.biases = nn.Parameter(torch.empty(output_dim))
        nn.init.xavier_normal_(self.weight)
        nn.init.constant_(self.biases, bias_start)

    def split_weight(self) -> tuple[Tensor, Tensor]:
        """The weight rows of the x channels and of the h channels, each [K * C, C_out] in (term, channel)
        order, the order of Diffusion.terms flattened."""
        channels_terms = self.weight.view(-1, self.num_terms, self.weight.shape[1])  # [C, K, C_out]
        x_part, h_part = channels_terms[: self.input_dim], channels_terms[self.input_dim:]
        return (x_part.transpose(0, 1).reshape(-1, self.weight.shape[1]),
                h_part.transpose(0, 1).reshape(-1, self.weight.shape[1]))


class CellWeights(NamedTuple):
    """A DCGRU cell's weights split by input, for one forward pass: gates (fn) and candidate (gc),
    x rows and h rows, [K * C, C_out] each."""

    fn_x: Tensor
    fn_h: Tensor
    gc_x: Tensor
    gc_h: Tensor


class DCGRUCell(nn.Module):
    """A GRU over the graph whose gates (_fn) and candidate (_gconv) are diffusion convolutions."""

    def __init__(self, input_dim: int, num_units: int, num_terms: int) -> None:
        super().__init__()
        self.num_units = num_units
        self._fn = GCONV(num_terms, input_dim, num_units, 2 * num_units, bias_start=1.0)
        self._gconv = GCONV(num_terms, input_dim, num_units, num_units, bias_start=0.0)

    def weights(self) -> CellWeights:
        return CellWeights(*self._fn.split_weight(), *self._gconv.split_weight())

    def input_terms(self, x_terms: Tensor, w: CellWeights) -> tuple[Tensor, Tensor]:
        """The x parts (and biases) of both convolutions from x's diffusion terms [..., K, C_in]:
        ([..., 2H], [..., H])."""
        flat = x_terms.flatten(-2)
        rows = flat.reshape(-1, flat.shape[-1])
        return (torch.addmm(self._fn.biases, rows, w.fn_x).view(*flat.shape[:-1], -1),
                torch.addmm(self._gconv.biases, rows, w.gc_x).view(*flat.shape[:-1], -1))

    def step(self, fn_x: Tensor, gc_x: Tensor, h: Tensor | None, diffusion: Diffusion, w: CellWeights) -> Tensor:
        """One step from the x parts fn_x [N, B, 2H], gc_x [N, B, H] (contiguous) and the state
        h [N, B, H] (None: the zero state) -> the new state [N, B, H]."""
        hidden = self.num_units
        if h is None:
            u = torch.sigmoid(fn_x[..., hidden:])
            return (1.0 - u) * torch.tanh(gc_x)
        nodes, batch, _ = h.shape
        gates = torch.addmm(fn_x.view(-1, 2 * hidden), diffusion.terms(h).view(nodes * batch, -1), w.fn_h)
        r, u = torch.sigmoid(gates).view(nodes, batch, 2 * hidden).split(hidden, dim=-1)
        c = torch.addmm(gc_x.view(-1, hidden), diffusion.terms(r * h).view(nodes * batch, -1), w.gc_h)
        return torch.lerp(torch.tanh(c).view(nodes, batch, hidden), h, u)  # u h + (1 - u) c


class EncoderModel(nn.Module):
    """num_rnn_layers DCGRU cells over the input window (LibCity's name and layout)."""

    def __init__(self, input_dim: int, rnn_units: int, num_layers: int, num_terms: int) -> None:
        super().__init__()
        dims = [input_dim] + [rnn_units] * (num_layers - 1)
        self.dcgru_layers = nn.ModuleList(DCGRUCell(d, rnn_units, num_terms) for d in dims)

    def forward(self, x: Tensor, diffusion: Diffusion) -> list[Tensor]:
        """x [N, T, B, C] -> each layer's final state [N, B, H]. Layer by layer: a layer's inputs are
        known for all steps before its recurrence, so their terms are computed at once."""
        finals = []
        for cell in self.dcgru_layers:
            w = cell.weights()
            fn_x, gc_x = cell.input_terms(diffusion.terms(x), w)  # [N, T, B, 2H], [N, T, B, H]
            h, states = None, []
            # Step-major copies: each step's part is then a contiguous view.
            for fn_t, gc_t in zip(fn_x.transpose(0, 1).contiguous().unbind(0), gc_x.transpose(0, 1).contiguous().unbind(0)):
                h = cell.step(fn_t, gc_t, h, diffusion, w)
                states.append(h)
            finals.append(h)
            x = torch.stack(states, dim=1)
        return finals


class DecoderModel(nn.Module):
    """num_rnn_layers DCGRU cells fed the previous output, and a projection H -> output_dim."""

    def __init__(self, output_dim: int, rnn_units: int, num_layers: int, num_terms: int) -> None:
        super().__init__()
        self.projection_layer = nn.Linear(rnn_units, output_dim)  # created first, as in LibCity
        dims = [output_dim] + [rnn_units] * (num_layers - 1)
        self.dcgru_layers = nn.ModuleList(DCGRUCell(d, rnn_units, num_terms) for d in dims)

    def forward(self, x: Tensor, states: list[Tensor], diffusion: Diffusion,
                weights: list[CellWeights]) -> tuple[Tensor, list[Tensor]]:
        """One step: x [N, B, output_dim], states per layer [N, B, H] -> (output [N, B, output_dim], states)."""
        new_states = []
        for cell, h, w in zip(self.dcgru_layers, states, weights):
            fn_x, gc_x = cell.input_terms(diffusion.terms(x), w)
            x = cell.step(fn_x, gc_x, h, diffusion, w)
            new_states.append(x)
        return self.projection_layer(x), new_states


class DCRNN(TrafficStateModel):
    """Outputs [B, output_window, N, output_dim] from an input window [B, input_window, N, feature_dim]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        super().__init__(config, data_feature)
        _check_settings(config)
        self.max_diffusion_step = config["max_diffusion_step"]
        self.cl_decay_steps = config["cl_decay_steps"]
        self.use_curriculum_learning = config["use_curriculum_learning"]
        table = DCRNN_LIBCITY_SUPPORTS if config["libcity_support_order"] else DCRNN_SUPPORTS
        build = lookup(table, config["filter_type"], "filter_type", where="--filter_type")
        supports = build(finite_adjacency(data_feature["adj_mx"], "DCRNN"))
        self.register_buffer("supports", torch.from_numpy(np.stack(supports).astype(np.float32)), persistent=False)
        num_terms = len(supports) * self.max_diffusion_step + 1
        units, layers = config["rnn_units"], config["num_rnn_layers"]
        self.encoder_model = EncoderModel(self.feature_dim, units, layers, num_terms)
        self.decoder_model = DecoderModel(self.output_dim, units, layers, num_terms)

    def sampling_threshold(self, batches_seen: int) -> float:
        """The probability of feeding the decoder the true value at ``batches_seen`` (curriculum learning)."""
        return self.cl_decay_steps / (self.cl_decay_steps + np.exp(batches_seen / self.cl_decay_steps))

    def forward(self, batch: Mapping[str, Tensor], batches_seen: int | None = None) -> Tensor:
        diffusion = Diffusion(self.supports, self.max_diffusion_step)
        x = batch["X"].permute(2, 1, 0, 3)                                 # [N, T_in, B, F]
        states = self.encoder_model(x, diffusion)                          # per layer [N, B, H]
        teacher = self.training and self.use_curriculum_learning
        if teacher:
            if batches_seen is None:
                raise LibTrafficError(
                    "DCRNN's curriculum learning needs the number of batches seen, which DCRNNExecutor passes: "
                    "train DCRNN with --executor DCRNNExecutor (its task_config default), or set "
                    "--use_curriculum_learning false.")
            labels = batch["y"][..., : self.output_dim].permute(1, 2, 0, 3).unbind(0)  # T_out x [N, B, output_dim]
            threshold = self.sampling_threshold(batches_seen)
        weights = [cell.weights() for cell in self.decoder_model.dcgru_layers]
        step_input = x.new_zeros(x.shape[0], x.shape[2], self.output_dim)   # the GO symbol
        outputs = []
        for t in range(self.output_window):
            output, states = self.decoder_model(step_input, states, diffusion, weights)
            outputs.append(output)
            # LibCity draws from numpy's global generator at every step, the last included.
            step_input = labels[t] if teacher and np.random.uniform(0, 1) < threshold else output
        return torch.stack(outputs).permute(2, 0, 1, 3)                    # [B, T_out, N, output_dim]

    def predict(self, batch: Mapping[str, Tensor], batches_seen: int | None = None) -> Tensor:
        return self.forward(batch, batches_seen)

    def calculate_loss(self, batch: Mapping[str, Tensor], batches_seen: int | None = None) -> Tensor:
        return self.real_units_loss("masked_mae", batch["y"], self.predict(batch, batches_seen))


def _check_settings(config: Mapping[str, Any]) -> None:
    for key, least in (("max_diffusion_step", 0), ("num_rnn_layers", 1), ("rnn_units", 1), ("cl_decay_steps", 1)):
        if config[key] < least:
            raise LibTrafficError(f"DCRNN: {key} must be at least {least}, got {config[key]}.")
