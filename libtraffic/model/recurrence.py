"""The fast CPU path of RNN: the autoregressive windows' recurrences, run together.

The model re-runs its recurrent net from a zero state over a sliding window for every output step:
window j (0 <= j < output_window) reads steps j .. j + input_window - 1 of the growing sequence,
whose last step is the prediction of window j - 1. Run one after the other that is
output_window * input_window small sequential steps. Here window j instead starts at slot j and
advances one step per slot, so at slot s every running window reads the same step s:

    slot:      0   1   2  ...  11  12  13 ...
    window 0:  x0  x1  x2 ...  x11                (done at slot 11 -> prediction p0 = step 12)
    window 1:      x1  x2 ...  x11 p0             (done at slot 12 -> p1 = step 13)
    window 2:          x2 ...  x11 p0  p1  ...

Each slot is one recurrent step of a [windows, B, H] state stack (windows join with a zero state and
leave when done), so there are input_window + output_window - 1 sequential steps instead of
input_window * output_window, with the same math per window. The first layer's input projection
W_ih x + b_ih depends only on the step and is computed once per step, shared by all windows.

Each recurrent step is one autograd node with a hand-written backward (few, fused ops). Gate order and
formulas match torch.nn.GRU / LSTM / RNN; the parameters are those of the torch module, so
checkpoints are interchangeable with the plain path. A bidirectional net with several layers
needs the whole window before its second layer can start; it is run window by window with the
same cells (WindowRunner).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

State = tuple[Tensor, ...]
# cell(gi, state, w_hh, b_hh) -> (output, new state); gi is [B, G*H] (shared by all windows) or
# [W, B, G*H]; every state tensor is [W, B, H] for a stack of W windows.
Cell = Callable[[Tensor, State, Tensor, Tensor], tuple[Tensor, State]]


def _hidden_projection(h: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """W_hh h + b_hh for a state stack h [W, B, H]: a new [W, B, G*H] tensor (safe to modify)."""
    windows, batch, hidden = h.shape
    return torch.addmm(b_hh, h.reshape(-1, hidden), w_hh.t()).view(windows, batch, -1)


def _linear_grads(ctx, needs: tuple[bool, ...], grad_gi: Tensor, grad_gh: Tensor,
                  grad_h_direct: Tensor | None) -> tuple[Tensor | None, ...]:
    """Gradients of (gi, h, w_hh, b_hh) from those of gi [W, B, G*H] and of W_hh h + b_hh.

    ``needs`` says which of the four are wanted; ``grad_h_direct`` is the part of dL/dh that does
    not go through W_hh h (None if nothing). Expects ctx.saved_tensors to start with (h, w_hh) and
    ctx.shared_gi (True when gi was [B, G*H], shared by all windows).
    """
    h, w_hh = ctx.saved_tensors[:2]
    hidden = h.shape[-1]
    flat = grad_gh.reshape(-1, grad_gh.shape[-1])
    grads: list[Tensor | None] = [None] * 4
    if needs[0]:
        grads[0] = grad_gi.sum(0) if ctx.shared_gi else grad_gi
    if needs[1]:
        grads[1] = (flat.mm(w_hh) if grad_h_direct is None else
                    torch.addmm(grad_h_direct.reshape(-1, hidden), flat, w_hh)).view_as(h)
    if needs[2]:
        grads[2] = flat.t().mm(h.reshape(-1, hidden))
    if needs[3]:
        grads[3] = flat.sum(0)
    return tuple(grads)


class _GRUStep(torch.autograd.Function):
    """h' = (1 - z) * n + z * h with torch.nn.GRU's gates r, z, n, forward and backward in few ops.

    gi: [B, 3H] or [W, B, 3H] input projection (b_ih included); h: [W, B, H]; w_hh: [3H, H];
    b_hh: [3H]. Returns h' [W, B, H].
    """

    @staticmethod
    def forward(ctx, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
        hidden = h.shape[-1]
        gates = _hidden_projection(h, w_hh, b_hh)
        gates[..., : 2 * hidden].add_(gi[..., : 2 * hidden]).sigmoid_()  # now r, z, W_hn h + b_hn
        r, z, hn = gates.split(hidden, dim=-1)
        n = torch.addcmul(gi[..., 2 * hidden :], r, hn).tanh_()
        h_minus_n = h - n
        ctx.save_for_backward(h, w_hh, gates, n, h_minus_n)
        ctx.shared_gi = gi.dim() == 2
        return torch.addcmul(n, z, h_minus_n)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        _, _, gates, n, h_minus_n = ctx.saved_tensors
        r, z, hn = gates.split(n.shape[-1], dim=-1)
        grad_n = grad * (1 - z) * (1 - n * n)  # with respect to the pre-activations
        grad_z = grad * h_minus_n * z * (1 - z)
        grad_r = grad_n * hn * r * (1 - r)
        grad_gi = torch.cat([grad_r, grad_z, grad_n], dim=-1)
        grad_gh = torch.cat([grad_r, grad_z, grad_n * r], dim=-1)
        return _linear_grads(ctx, ctx.needs_input_grad, grad_gi, grad_gh, grad * z)


class _LSTMStep(torch.autograd.Function):
    """c' = f * c + i * g, h' = o * tanh(c') with torch.nn.LSTM's gates i, f, g, o.

    gi: [B, 4H] or [W, B, 4H]; h, c: [W, B, H]; w_hh: [4H, H]; b_hh: [4H]. Returns (h', c').
    """

    @staticmethod
    def forward(ctx, gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
        hidden = h.shape[-1]
        gates = _hidden_projection(h, w_hh, b_hh).add_(gi)
        gates[..., : 2 * hidden].sigmoid_()
        gates[..., 2 * hidden : 3 * hidden].tanh_()
        gates[..., 3 * hidden :].sigmoid_()
        i, f, g, o = gates.split(hidden, dim=-1)
        c_new = torch.addcmul(f * c, i, g)
        tanh_c = c_new.tanh()
        ctx.save_for_backward(h, w_hh, c, gates, tanh_c)
        ctx.shared_gi = gi.dim() == 2
        return o * tanh_c, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: Tensor, grad_c: Tensor) -> tuple[Tensor | None, ...]:
        _, _, c, gates, tanh_c = ctx.saved_tensors
        i, f, g, o = gates.split(c.shape[-1], dim=-1)
        grad_c = grad_c + grad_h * o * (1 - tanh_c * tanh_c)
        grad_gates = torch.cat([
            grad_c * g * i * (1 - i), grad_c * c * f * (1 - f),
            grad_c * i * (1 - g * g), grad_h * tanh_c * o * (1 - o),
        ], dim=-1)
        needs = ctx.needs_input_grad  # gi, h, c, w_hh, b_hh
        grad_gi, grad_h_prev, grad_w, grad_b = _linear_grads(ctx, needs[:2] + needs[3:], grad_gates, grad_gates, None)
        grad_c_prev = grad_c * f if needs[2] else None
        return grad_gi, grad_h_prev, grad_c_prev, grad_w, grad_b


class _RNNStep(torch.autograd.Function):
    """h' = tanh(gi + W_hh h + b_hh) as torch.nn.RNN (tanh). gi: [B, H] or [W, B, H]; h: [W, B, H]."""

    @staticmethod
    def forward(ctx, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
        out = _hidden_projection(h, w_hh, b_hh).add_(gi).tanh_()
        ctx.save_for_backward(h, w_hh, out)
        ctx.shared_gi = gi.dim() == 2
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        out = ctx.saved_tensors[2]
        grad_pre = grad * (1 - out * out)
        return _linear_grads(ctx, ctx.needs_input_grad, grad_pre, grad_pre, None)


def gru_cell(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, State]:
    h = _GRUStep.apply(gi, state[0], w_hh, b_hh)
    return h, (h,)


def lstm_cell(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, State]:
    h, c = _LSTMStep.apply(gi, *state, w_hh, b_hh)
    return h, (h, c)


def rnn_cell(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, State]:
    h = _RNNStep.apply(gi, state[0], w_hh, b_hh)
    return h, (h,)


CELLS: dict[str, tuple[Cell, int]] = {"GRU": (gru_cell, 1), "LSTM": (lstm_cell, 2), "RNN": (rnn_cell, 1)}


class _Runner:
    """Common part of the runners: weights of a torch recurrent module, input projections."""

    def __init__(self, rnn: nn.RNNBase, rnn_type: str, steps: Tensor) -> None:
        self.rnn = rnn
        self.cell, self.state_size = CELLS[rnn_type]
        self.directions = 2 if rnn.bidirectional else 1
        self.hidden = rnn.hidden_size
        # First-layer input projections per direction, one [B, G*H] entry per step of the sequence.
        self.proj = [list(self.project(steps, 0, d).unbind(1)) for d in range(self.directions)]

    def weights(self, layer: int, direction: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(w_ih, b_ih, w_hh, b_hh) of one layer and direction, as torch names them."""
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        return tuple(getattr(self.rnn, name + sfx) for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))

    def project(self, x: Tensor, layer: int, direction: int) -> Tensor:
        w_ih, b_ih, _, _ = self.weights(layer, direction)
        return F.linear(x, w_ih, b_ih)

    def append(self, step: Tensor) -> None:
        """Add the next step [B, in] of the sequence (the last prediction)."""
        for d in range(self.directions):
            self.proj[d].append(self.project(step, 0, d))

    def zeros(self, windows: int) -> State:
        ref = self.proj[0][0]
        return tuple(ref.new_zeros(windows, ref.shape[0], self.hidden) for _ in range(self.state_size))

    def step(self, gi: Tensor, state: State, layer: int, direction: int) -> tuple[Tensor, State]:
        _, _, w_hh, b_hh = self.weights(layer, direction)
        return self.cell(gi, state, w_hh, b_hh)

    def dropout(self, x: Tensor) -> Tensor:
        """torch's dropout between stacked layers (train mode only)."""
        return F.dropout(x, self.rnn.dropout, self.rnn.training)


class WavefrontRunner(_Runner):
    """All windows of the autoregressive model advanced together, one slot per sequence step.

    Handles any number of layers, and bidirectional nets with one layer (the reverse direction's
    output at a window's last position is one step from zeros on that step).
    """

    def __init__(self, rnn: nn.RNNBase, rnn_type: str, steps: Tensor, input_window: int, output_window: int) -> None:
        if rnn.bidirectional and rnn.num_layers > 1:
            raise ValueError("WavefrontRunner runs bidirectional nets with one layer only; use WindowRunner.")
        super().__init__(rnn, rnn_type, steps)
        self.input_window, self.output_window = input_window, output_window
        self.states: list[State | None] = [None] * rnn.num_layers
        self.slot = 0
        self.top: Tensor | None = None  # last layer's output stack of the latest slot

    def last(self, window: int) -> Tensor:
        """Output [B, H*dirs] of the net at the last step of window ``window`` (called in order)."""
        end = window + self.input_window - 1  # slot at which this window reads its last step
        if self.slot > end:
            raise ValueError(f"window {window} has already been passed; ask for the windows in order.")
        while self.slot <= end:
            self._advance()
        out = self.top[0]  # the oldest running window is the one that just finished
        if self.directions == 2:
            reverse, _ = self.step(self.proj[1][end], self.zeros(1), 0, 1)
            out = torch.cat([out, reverse[0]], dim=-1)
        return out

    def _advance(self) -> None:
        s = self.slot
        retire = s >= self.input_window  # window s - input_window finished at the previous slot
        join = s < self.output_window  # window s starts here
        x = self.proj[0][s]  # shared by every running window: [B, G*H]
        for layer, state in enumerate(self.states):
            if state is None:
                state = self.zeros(1)
            else:
                state = tuple(_restack(t, retire, join) for t in state)
            if layer:
                x = self.project(self.dropout(x), layer, 0)
            x, self.states[layer] = self.step(x, state, layer, 0)
        self.top = x
        self.slot += 1


def _restack(t: Tensor, retire: bool, join: bool) -> Tensor:
    """Drop the first (finished) window and/or append a zero state for a new window."""
    if retire:
        t = t[1:]
    if join:
        t = torch.cat([t, t.new_zeros(1, *t.shape[1:])])
    return t


class WindowRunner(_Runner):
    """Each window run on its own (any configuration; used for bidirectional multi-layer nets)."""

    def __init__(self, rnn: nn.RNNBase, rnn_type: str, steps: Tensor, input_window: int, output_window: int) -> None:
        super().__init__(rnn, rnn_type, steps)
        self.input_window = input_window

    def last(self, window: int) -> Tensor:
        """Output [B, H*dirs] of the net at the last step of window ``window``."""
        projections = [p[window : window + self.input_window] for p in self.proj]
        for layer in range(self.rnn.num_layers):
            final = layer == self.rnn.num_layers - 1
            per_dir = []
            for d in range(self.directions):
                if final and d == 1:  # the reverse direction's last position is its first step
                    per_dir.append([self.step(projections[d][-1], self.zeros(1), layer, d)[0][0]])
                else:
                    per_dir.append(self._direction(projections[d], layer, d))
            if final:
                return torch.cat([outs[-1] for outs in per_dir], dim=-1)
            seq = torch.cat([torch.stack(outs, 1) for outs in per_dir], dim=-1)  # [B, W, H*dirs]
            seq = self.dropout(seq)
            projections = [list(self.project(seq, layer + 1, d).unbind(1)) for d in range(self.directions)]
        raise AssertionError("unreachable")

    def _direction(self, projections: list[Tensor], layer: int, direction: int) -> list[Tensor]:
        """Outputs [B, H] at each position of ``projections``, from a zero state."""
        order = range(len(projections) - 1, -1, -1) if direction else range(len(projections))
        outputs: list[Tensor] = [projections[0]] * len(projections)
        state = self.zeros(1)
        for t in order:
            out, state = self.step(projections[t], state, layer, direction)
            outputs[t] = out[0]
        return outputs


def make_runner(rnn: nn.RNNBase, rnn_type: str, steps: Tensor, input_window: int, output_window: int) -> _Runner:
    """The fast runner for ``rnn``; ``steps`` [B, input_window, in] is the known input window."""
    runner = WindowRunner if rnn.bidirectional and rnn.num_layers > 1 else WavefrontRunner
    return runner(rnn, rnn_type, steps, input_window, output_window)
