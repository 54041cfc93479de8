"""Check that rnn_impl 'fast' computes what 'plain' (torch.nn.GRU/LSTM/RNN per window) computes.

    python bench/check_fast.py

For GRU, LSTM and RNN with one and two layers, uni- and bidirectional, extra input features and
teacher forcing, both implementations run on the same random weights and batch; predictions and
every parameter gradient must agree within float tolerance. The fused recurrent steps are also
checked with torch.autograd.gradcheck in float64. Exits non-zero on a mismatch.
"""

from __future__ import annotations

import itertools
import random
import sys

import torch

from libtraffic.data.scalers import NoneScaler
from libtraffic.model.recurrence import _GRUStep, _LSTMStep, _RNNStep
from libtraffic.model.rnn import RNN


def run(model: RNN, impl: str, batch: dict, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.rnn_impl = impl
    model.zero_grad(set_to_none=True)
    random.seed(seed)  # same teacher-forcing draws for both implementations
    pred = model(batch)
    (pred * batch["w"]).sum().backward()
    return pred.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def check(rnn_type: str, layers: int, bidirectional: bool, feature_dim: int, teacher: float,
          windows: tuple[int, int], train: bool) -> float:
    torch.manual_seed(0)
    n, batch_size, (w_in, w_out) = 5, 3, windows
    config = dict(input_window=w_in, output_window=w_out, rnn_type=rnn_type, hidden_size=8, num_layers=layers,
                  bidirectional=bidirectional, teacher_forcing_ratio=teacher, rnn_impl="plain", dropout=0.0)
    feature = dict(scaler=NoneScaler(), num_nodes=n, feature_dim=feature_dim, output_dim=1)
    model = RNN(config, feature).train(train)
    batch = {"X": torch.randn(batch_size, w_in, n, feature_dim), "y": torch.randn(batch_size, w_out, n, feature_dim),
             "w": torch.randn(batch_size, w_out, n, 1)}
    pred_p, grad_p = run(model, "plain", batch, 1)
    pred_f, grad_f = run(model, "fast", batch, 1)
    err = (pred_f - pred_p).abs().max().item() / pred_p.abs().max().item()
    for name, g in grad_p.items():
        err = max(err, ((grad_f[name] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item())
    return err


def main() -> None:
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    worst = 0.0
    cases = [*itertools.product(("GRU", "LSTM", "RNN"), (1, 2), (False, True), (1, 2), (0.0, 0.5),
                                ((3, 5), (4, 2), (1, 3)), (True, False)),
             *itertools.product(("GRU", "LSTM", "RNN"), (1, 2), (False, True), (1,), (0.0,), ((12, 12),), (True,))]
    for case in cases:
        err = check(*case)
        worst = max(worst, err)
        if err > 1e-4:
            print(f"MISMATCH {case}: relative error {err:.2e}")
    for step, gates, states in ((_GRUStep, 3, 1), (_LSTMStep, 4, 2), (_RNNStep, 1, 1)):
        for shared in (True, False):  # gi [B, G*H] shared by the windows, or one per window
            hidden, windows, batch_size = 3, 2, 4
            shapes = [(batch_size, gates * hidden) if shared else (windows, batch_size, gates * hidden),
                      *[(windows, batch_size, hidden)] * states, (gates * hidden, hidden), (gates * hidden,)]
            args = tuple(torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes)
            if not torch.autograd.gradcheck(step.apply, args):
                worst = float("inf")
    print(f"worst relative difference fast vs plain (outputs and gradients): {worst:.2e}")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
