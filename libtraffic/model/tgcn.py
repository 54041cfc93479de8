"""TGCN: temporal graph convolutional network (Zhao et al., IEEE T-ITS 2020), as in LibCity.

A GRU whose two linear maps are one-hop graph convolutions over the fixed graph

    S = D~^-1/2 (A + I)^T D~^-1/2,   D~ the row sums of A + I         [N, N]
    gc(z; W, b) = (S z) W + b                                          z [N, C+H] per sample
    r, u = split(sigmoid(gc([x_t, h]; weights_0, bias_0)))            reset, update gates [N, H] each
    c    = tanh(gc([x_t, r * h]; weights_1, bias_1))                   candidate
    h    = u * h + (1 - u) * c

runs over the input window from h = 0; one linear layer maps the last state of each node to all
output_window steps at once: [N, H] -> [N, output_window * output_dim].

Loss (LibCity's TGCN, not the usual masked MAE), on inverse-scaled values over the batch's
M = B * output_window * N * output_dim predictions:

    (||y - y_hat||^2 / 2 + lambda * sum_p ||p||^2 / 2) / M

The math and the parameters (names, shapes, creation order) are LibCity's; the arrangement is
ours, for speed (the numbers agree to float rounding):
  * S is a dense buffer built once; tensors are node-major [N, B, C], so S z is one [N, N] x
    [N, B*C] product with no permutes inside the recurrence;
  * the graph convolution is linear, so the input's share of both convolutions (S x_t) W_x + b
    is computed for all steps at once before the recurrence; each step convolves only the state;
  * the first step starts from h = 0, whose convolution is 0, so it multiplies nothing by S.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from libtraffic.model.base import TrafficStateModel
from libtraffic.model.graph import finite_adjacency, self_loop_normalized
from libtraffic.utils.errors import LibTrafficError


class TGCNCell(nn.Module):
    """The graph GRU cell: weights_0 [C+H, 2H], bias_0 [2H] (gates r, u), weights_1 [C+H, H],
    bias_1 [H] (candidate); the first C rows of each weight act on the input, the rest on the state."""

    def __init__(self, num_units: int, support: Tensor, input_dim: int) -> None:
        super().__init__()
        self.num_units = num_units
        self.input_dim = input_dim
        self.register_buffer("support", support, persistent=False)  # S [N, N]; not in LibCity's state_dict
        size = input_dim + num_units
        # LibCity's registration order and initialisation (xavier normal weights, zero biases), so a
        # seed draws LibCity's initial weights.
        self.weights_0 = nn.Parameter(torch.empty(size, 2 * num_units))
        self.weights_1 = nn.Parameter(torch.empty(size, num_units))
        self.bias_0 = nn.Parameter(torch.zeros(2 * num_units))
        self.bias_1 = nn.Parameter(torch.zeros(num_units))
        nn.init.xavier_normal_(self.weights_0)
        nn.init.xavier_normal_(self.weights_1)

    def run(self, inputs: Tensor) -> Tensor:
        """The cell over a sequence from h = 0: inputs [T, N, B, C] -> the last state [N, B, H]."""
        steps, nodes, batch, channels = inputs.shape
        hidden, c = self.num_units, self.input_dim
        # The input's share of both convolutions, all steps at once: [T, N*B, 2H] and [T, N*B, H].
        mixed = (self.support @ inputs.permute(1, 0, 2, 3).reshape(nodes, -1))  # S x: [N, T*B*C]
        mixed = mixed.view(nodes, steps, batch * channels).transpose(0, 1).reshape(steps, nodes * batch, channels)
        gate_terms = torch.baddbmm(self.bias_0, mixed, self.weights_0[:c].expand(steps, -1, -1))
        cand_terms = torch.baddbmm(self.bias_1, mixed, self.weights_1[:c].expand(steps, -1, -1))
        gate_h, cand_h = self.weights_0[c:], self.weights_1[c:]  # [H, 2H], [H, H]
        state = None  # h = 0
        for gate_pre, cand_pre in zip(gate_terms.unbind(0), cand_terms.unbind(0)):  # [N*B, 2H], [N*B, H]
            if state is None:
                u = torch.sigmoid(gate_pre[:, hidden:])
                state = (1 - u) * torch.tanh(cand_pre)  # r * 0 = 0: the candidate sees the input only
                continue
            r, u = torch.sigmoid(torch.addmm(gate_pre, self._mix(state, nodes), gate_h)).split(hidden, dim=1)
            candidate = torch.tanh(torch.addmm(cand_pre, self._mix(r * state, nodes), cand_h))
            state = torch.lerp(candidate, state, u)  # u * h + (1 - u) * c
        return state.view(nodes, batch, hidden)

    def _mix(self, z: Tensor, nodes: int) -> Tensor:
        """S z for z [N*B, H] (node-major rows): [N*B, H]."""
        return (self.support @ z.view(nodes, -1)).view(z.shape)


class TGCN(TrafficStateModel):
    """Outputs [B, output_window, N, output_dim] from an input window [B, input_window, N, feature_dim]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        super().__init__(config, data_feature)
        self.gru_units = config["rnn_units"]
        self.lam = config["lambda"]
        if self.gru_units < 1:
            raise LibTrafficError(f"TGCN: rnn_units must be at least 1, got {self.gru_units}.")
        if not self.lam >= 0:
            raise LibTrafficError(f"TGCN: lambda (the weight of the L2 penalty in its loss) must be >= 0, got {self.lam}.")
        support = tgcn_support(data_feature["adj_mx"])
        self.tgcn_model = TGCNCell(self.gru_units, support, self.feature_dim)
        self.output_model = nn.Linear(self.gru_units, self.output_window * self.output_dim)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = batch["X"]                                                   # [B, T_in, N, F]
        batch_size = x.shape[0]
        state = self.tgcn_model.run(x.permute(1, 2, 0, 3))               # [N, B, H]
        out = self.output_model(state)                                   # [N, B, T_out * C]
        out = out.view(self.num_nodes, batch_size, self.output_window, self.output_dim)
        return out.permute(1, 2, 0, 3)                                   # [B, T_out, N, C]

    def calculate_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(squared error / 2 + lambda * L2 of all weights / 2) / number of predictions, in real units."""
        y_true = self.scaler.inverse_transform(batch["y"][..., : self.output_dim])
        y_pred = self.scaler.inverse_transform(self.predict(batch)[..., : self.output_dim])
        l2 = sum(p.square().sum() for p in self.parameters()) / 2
        return ((y_true - y_pred).square().sum() / 2 + self.lam * l2) / y_pred.numel()


def tgcn_support(adj_mx: Any) -> Tensor:
    """TGCN's S = D~^-1/2 (A + I)^T D~^-1/2 of the dataset's adjacency: [N, N] float32."""
    return torch.from_numpy(self_loop_normalized(finite_adjacency(adj_mx, "TGCN")))
