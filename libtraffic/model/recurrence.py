"""Recurrent cells driven by precomputed input projections (the fast CPU path of RNN).

The autoregressive RNN re-runs the recurrence over a sliding window for every output step, so
the same input steps recur up to ``input_window`` times. The first layer's input projection
W_ih x + b_ih depends only on the step, so it is computed once per distinct step; these cells
then only add the hidden-to-hidden part. Gate order and formulas match torch.nn.GRU / LSTM / RNN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gru_step(gi: Tensor, state: tuple[Tensor, ...] | None, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One GRU step. gi: [B, 3H] input projection; state: (h,) or None for a zero start."""
    hidden = w_hh.shape[1]
    if state is None:  # h = 0: the hidden projection is just its bias
        gh = b_hh.expand(gi.shape[0], -1)
        h = None
    else:
        h = state[0]
        gh = torch.addmm(b_hh, h, w_hh.t())
    rz = torch.sigmoid(gi[:, : 2 * hidden] + gh[:, : 2 * hidden])
    r, z = rz[:, :hidden], rz[:, hidden:]
    n = torch.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
    new_h = n - z * n if h is None else n + z * (h - n)
    return new_h, (new_h,)


def lstm_step(gi: Tensor, state: tuple[Tensor, ...] | None, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One LSTM step. gi: [B, 4H] (gates i, f, g, o); state: (h, c) or None."""
    hidden = w_hh.shape[1]
    gates = gi + b_hh if state is None else gi + torch.addmm(b_hh, state[0], w_hh.t())
    ifo = torch.sigmoid(torch.cat([gates[:, : 2 * hidden], gates[:, 3 * hidden :]], dim=1))
    i, f, o = ifo[:, :hidden], ifo[:, hidden : 2 * hidden], ifo[:, 2 * hidden :]
    g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
    c = i * g if state is None else f * state[1] + i * g
    h = o * torch.tanh(c)
    return h, (h, c)


def rnn_step(gi: Tensor, state: tuple[Tensor, ...] | None, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One Elman RNN (tanh) step. gi: [B, H]; state: (h,) or None."""
    h = torch.tanh(gi + b_hh if state is None else gi + torch.addmm(b_hh, state[0], w_hh.t()))
    return h, (h,)


STEPS = {"GRU": gru_step, "LSTM": lstm_step, "RNN": rnn_step}


def run_direction(step, projections: list[Tensor], w_hh: Tensor, b_hh: Tensor, reverse: bool) -> list[Tensor]:
    """Outputs [B, H] for each position of ``projections`` (list of [B, G*H]), starting from zeros."""
    order = range(len(projections) - 1, -1, -1) if reverse else range(len(projections))
    outputs: list[Tensor] = [projections[0]] * len(projections)
    state = None
    for t in order:
        out, state = step(projections[t], state, w_hh, b_hh)
        outputs[t] = out
    return outputs
