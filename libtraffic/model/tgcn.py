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
  * S and S^T are sparse (a sensor has a few neighbours) and built once; tensors are node-major
    [N, B, C], so S z is one sparse [N, N] x [N, B*C] product with no permutes in the recurrence;
  * the graph convolution is linear, so the input's share (S x_t) is mixed for all steps at once
    and each step mixes only the state; the first step starts from h = 0 and mixes nothing;
  * the recurrence is one autograd Function with a hand-written backward pass: each step writes
    into buffers kept from one batch to the next (no allocation, no autograd graph per step), and
    the weight gradients of all steps are a few long matrix products at the end.
"""

from __future__ import annotations

import math
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
        # S and S^T as sparse matrices (S has about as many entries per row as a sensor has
        # neighbours); buffers, so they follow the model's device, but not in LibCity's state_dict.
        self.register_buffer("support", support.to_sparse().coalesce(), persistent=False)
        self.register_buffer("support_t", support.t().to_sparse().coalesce(), persistent=False)
        size = input_dim + num_units
        # LibCity's registration order and initialisation (xavier normal weights, zero biases), so a
        # seed draws LibCity's initial weights.
        self.weights_0 = nn.Parameter(torch.empty(size, 2 * num_units))
        self.weights_1 = nn.Parameter(torch.empty(size, num_units))
        self.bias_0 = nn.Parameter(torch.zeros(2 * num_units))
        self.bias_1 = nn.Parameter(torch.zeros(num_units))
        nn.init.xavier_normal_(self.weights_0)
        nn.init.xavier_normal_(self.weights_1)
        self._spare: list[Workspace] = []  # buffers of the last training pass, for the next
        self._eval_work = Workspace()

    def run(self, inputs: Tensor) -> Tensor:
        """The cell over a sequence from h = 0: inputs [T, N, B, C] -> the last state [N, B, H]."""
        steps, nodes, batch, channels = inputs.shape
        # S x_t for all steps at once (the input's share of both convolutions): [T, N*B, C].
        mixed = torch.mm(self.support, inputs.permute(1, 0, 2, 3).reshape(nodes, -1))  # [N, T*B*C]
        mixed = mixed.view(nodes, steps, batch * channels).transpose(0, 1).reshape(steps, nodes * batch, channels)
        args = (mixed, self.weights_0, self.bias_0, self.weights_1, self.bias_1, self.support)
        if torch.is_grad_enabled() and any(a.requires_grad for a in args[:5]):
            state = GraphGRU.apply(*args, self.support_t, self._spare)
        else:
            state = graph_gru_forward(*args, keep=False, work=self._eval_work)[0].clone()
        return state.view(nodes, batch, self.num_units)


class Workspace:
    """Named buffers kept from one pass to the next: allocating the recurrence's few hundred MB anew
    for every batch costs a page fault per 4 kB, which is more than some of the steps' arithmetic."""

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}  # flat

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The buffer ``name`` of ``shape`` with ``like``'s dtype and device (contents undefined): the
        front of the buffer kept under that name when it is large enough (a smaller last batch)."""
        buffer, size = self.buffers.get(name), math.prod(shape)
        if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self.buffers[name] = like.new_empty(size)
        return buffer[:size].view(shape)


def _mix(support: Tensor, z: Tensor, out: Tensor, accumulate: bool = False) -> Tensor:
    """out = S z (or out += S z) for node-major z [N*B, C] and S [N, N] sparse: [N*B, C]."""
    z, target = z.view(support.shape[1], -1), out.view(support.shape[0], -1)
    if accumulate:
        torch.addmm(target, support, z, out=target)
    else:
        torch.mm(support, z, out=target)
    return out


def graph_gru_forward(mixed: Tensor, weights_0: Tensor, bias_0: Tensor, weights_1: Tensor, bias_1: Tensor,
                      support: Tensor, keep: bool, work: Workspace) -> tuple[Tensor, dict[str, Tensor]]:
    """The recurrence from h_0 = 0 over node-major rows (n, b); returns h_T [N*B, H] and, with
    ``keep``, what the backward pass needs (every step's state, gates, candidate, mixed states).

    mixed [T, N*B, C]: S x_t. With m = S h and the weights' rows split into input (x) and state (h):
    z = sigmoid(S x_t W0x + m W0h + b0) = [r, u];  q = S (r h);  c = tanh(S x_t W1x + q W1h + b1);
    h' = u h + (1 - u) c. The steps write into buffers from ``work``.
    """
    steps, rows, channels = mixed.shape
    hidden = bias_1.shape[0]
    w0x, w0h, w1x, w1h = weights_0[:channels], weights_0[channels:], weights_1[:channels], weights_1[channels:]
    slots = steps if keep else 1
    states = work.get("states", (steps + 1 if keep else 2, rows, hidden), mixed)  # h_0 .. h_T (or two in turn)
    gates, cands = work.get("gates", (slots, rows, 2 * hidden), mixed), work.get("cands", (slots, rows, hidden), mixed)
    mixed_h = work.get("mixed_h", (slots, rows, hidden), mixed)  # S h; unused at t = 0
    mixed_q = work.get("mixed_q", (slots, rows, hidden), mixed)  # S (r h); unused at t = 0
    states[0].zero_()
    for t in range(steps):
        i = t if keep else 0
        h, h_next = (states[t], states[t + 1]) if keep else (states[t % 2], states[(t + 1) % 2])
        z, cand = torch.addmm(bias_0, mixed[t], w0x, out=gates[i]), torch.addmm(bias_1, mixed[t], w1x, out=cands[i])
        if t > 0:  # at t = 0, h = 0 and both convolutions of the state are 0
            z.addmm_(_mix(support, h, mixed_h[i]), w0h)
        z.sigmoid_()
        if t > 0:
            q = torch.mul(z[:, :hidden], h, out=h_next)  # r h, kept in h' until h' is computed
            cand.addmm_(_mix(support, q, mixed_q[i]), w1h)
        cand.tanh_()
        torch.lerp(cand, h, z[:, hidden:], out=h_next)  # c + u (h - c)
    saved = {"states": states, "gates": gates, "cands": cands, "mixed_h": mixed_h, "mixed_q": mixed_q}
    return states[steps if keep else steps % 2], saved


def graph_gru_backward(grad: Tensor, mixed: Tensor, weights_0: Tensor, weights_1: Tensor, support_t: Tensor,
                       saved: dict[str, Tensor], input_grad: bool, work: Workspace) -> tuple[Tensor | None, ...]:
    """Back-propagation through time of graph_gru_forward: from the gradient of h_T [N*B, H], the
    gradients of mixed (when ``input_grad``), weights_0, bias_0, weights_1 and bias_1. Scratch
    buffers come from ``work``."""
    states, gates, cands = saved["states"], saved["gates"], saved["cands"]
    steps, rows, hidden = cands.shape
    channels = mixed.shape[-1]
    w0h, w1h = weights_0[channels:], weights_1[channels:]
    # Per step, before the activations: d_gates = [dL/dr, dL/du], d_cands = dL/dc.
    d_gates, d_cands = work.get("d_gates", gates.shape, gates), work.get("d_cands", cands.shape, cands)
    dh, dh_prev, scratch, d_mixed = (work.get(name, grad.shape, grad) for name in ("dh", "dh_prev", "scratch", "d_mixed"))
    dh.copy_(grad)
    for t in reversed(range(steps)):
        h, z, cand = states[t], gates[t], cands[t]
        r, u = z[:, :hidden], z[:, hidden:]
        dz, dc = d_gates[t], d_cands[t]
        dr, du = dz[:, :hidden], dz[:, hidden:]
        torch.sub(h, cand, out=du).mul_(dh)                # dL/du = dh (h - c)
        torch.mul(dh, u, out=dh_prev)                      # through u h
        torch.sub(dh, dh_prev, out=dc)                     # dL/dc = dh (1 - u)
        torch.mul(dc, cand, out=scratch)
        dc.addcmul_(scratch, cand, value=-1)               # through tanh: (1 - c^2)
        du.mul_(u).addcmul_(du, u, value=-1)               # through sigmoid: u (1 - u)
        if t == 0:  # h_0 = 0: r multiplies nothing and nothing flows further back
            dr.zero_()
            break
        _mix(support_t, torch.mm(dc, w1h.t(), out=scratch), d_mixed)  # dL/d(r h) = S^T (dc W1h^T)
        torch.mul(d_mixed, h, out=dr)                      # dL/dr
        dh_prev.addcmul_(d_mixed, r)                       # through r h
        dr.mul_(r).addcmul_(dr, r, value=-1)               # through sigmoid
        torch.mm(dz, w0h.t(), out=scratch)
        _mix(support_t, scratch, dh_prev, accumulate=True)  # through S h
        dh, dh_prev = dh_prev, dh
    # Every step's share of the weight gradients in one product per block: the input rows and the
    # bias (a column of ones beside S x) over all steps, the state rows over steps 1.. (h_0 = 0).
    x_one = torch.cat([mixed.reshape(-1, channels), mixed.new_ones(steps * rows, 1)], 1).t()  # [C+1, T*N*B]
    flat_gates, flat_cands = d_gates.view(-1, 2 * hidden), d_cands.view(-1, hidden)
    x_gates, x_cands = x_one @ flat_gates, x_one @ flat_cands  # [C+1, 2H], [C+1, H]
    d_w0 = torch.cat([x_gates[:channels], saved["mixed_h"][1:].reshape(-1, hidden).t() @ d_gates[1:].view(-1, 2 * hidden)])
    d_w1 = torch.cat([x_cands[:channels], saved["mixed_q"][1:].reshape(-1, hidden).t() @ d_cands[1:].view(-1, hidden)])
    d_x = None
    if input_grad:
        d_x = (flat_gates @ weights_0[:channels].t()).addmm_(flat_cands, weights_1[:channels].t()).view_as(mixed)
    return d_x, d_w0, x_gates[channels], d_w1, x_cands[channels]


class GraphGRU(torch.autograd.Function):
    """graph_gru_forward with its hand-written backward pass (no autograd graph per step). ``spare``
    holds the workspace of the last finished pass: a pass takes it and gives it back after its
    backward, so two passes alive at once never share buffers."""

    @staticmethod
    def forward(ctx: Any, mixed: Tensor, weights_0: Tensor, bias_0: Tensor, weights_1: Tensor, bias_1: Tensor,
                support: Tensor, support_t: Tensor, spare: list[Workspace]) -> Tensor:
        work = spare.pop() if spare else Workspace()
        state, saved = graph_gru_forward(mixed, weights_0, bias_0, weights_1, bias_1, support, keep=True, work=work)
        ctx.names, ctx.spare, ctx.work = list(saved), spare, work
        # The saved buffers also through save_for_backward, so that any later write to them is caught.
        ctx.save_for_backward(mixed, weights_0, weights_1, support_t, *saved.values())
        return state

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mixed, weights_0, weights_1, support_t, *saved = ctx.saved_tensors
        grads = graph_gru_backward(grad.contiguous(), mixed, weights_0, weights_1, support_t,
                                   dict(zip(ctx.names, saved)), ctx.needs_input_grad[0], ctx.work)
        ctx.spare[:] = [ctx.work]
        return (*grads, None, None, None)


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
