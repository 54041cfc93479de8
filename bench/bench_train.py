"""Training-speed benchmark: one epoch of the default GRU, rnn_impl 'plain' vs 'fast'.

    python bench/bench_train.py [--repeats N] [--batches K] [--epochs E] [--threads T]

Default GRU config (hidden 64, batch 64, Adam, masked MAE) on bench/raw_data/METR_LA_BENCH (make it
with bench/make_data.py): 23974 training samples at train_rate 0.7, padded to 375 batches of 64.
Per-batch time = zero_grad + forward + loss + backward + optimiser step, as in the executor; each of
the --repeats rounds times --batches consecutive training batches per implementation (after two
warm-up batches), alternating implementations so both see the same machine load. The full epoch is
the executor's own training loop over the whole loader (--epochs times; 0 skips it). Before timing,
fast and plain are run on the same weights and batch to check outputs and gradients agree.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import time

import torch

from benchlib import BENCH_DIR, DATASET, MODEL, TASK, median, require_dataset, table, write_section

IMPLS = ("plain", "fast")
TARGET_EPOCH_S, STRETCH_EPOCH_S = 40.0, 28.0
LIBCITY_EPOCH_S, LIBCITY_BATCH_MS = 56.0, 168.0


def build(impl: str, base_state: dict | None):
    """(training loader, executor) for ``impl``; weights copied from ``base_state`` if given."""
    from libtraffic.config import ConfigParser
    from libtraffic.data import get_dataset
    from libtraffic.executor import TrafficStateExecutor
    from libtraffic.model import get_model

    config = ConfigParser(TASK, MODEL, DATASET, other_args={"rnn_impl": impl, "gpu": False})
    dataset = get_dataset(config)
    train_loader = dataset.get_data()[0]
    feature = dataset.get_data_feature()
    torch.manual_seed(config["seed"])
    model = get_model(config, feature)
    if base_state is not None:
        model.load_state_dict(base_state)
    return train_loader, TrafficStateExecutor(config, model, feature, logging.getLogger("bench"))


def train_step(executor, batch) -> tuple[float, float]:
    """One optimisation step as TrafficStateExecutor._train_epoch does it; (wall, CPU) seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    executor.optimizer.zero_grad(set_to_none=True)
    loss = executor._batch_loss(batch)
    loss.backward()
    executor.optimizer.step()
    loss.item()
    return time.perf_counter() - start, time.process_time() - cpu


def agreement(executors: dict, batch) -> tuple[float, float, float]:
    """Max abs difference of fast vs plain predictions, the prediction scale, and max rel grad diff."""
    preds, grads = {}, {}
    for impl, ex in executors.items():
        ex.model.train()
        ex.model.zero_grad(set_to_none=True)
        preds[impl] = ex.model.predict(batch)
        ex.model.calculate_loss(batch).backward()
        grads[impl] = {n: p.grad.clone() for n, p in ex.model.named_parameters()}
        ex.model.zero_grad(set_to_none=True)
    diff = (preds["fast"] - preds["plain"]).abs().max().item()
    grad_rel = max(((grads["fast"][n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
                   for n, g in grads["plain"].items())
    return diff, preds["plain"].abs().max().item(), grad_rel


def time_batches(executors: dict, loader, repeats: int, batches: int) -> dict[str, dict[str, list[float]]]:
    """Per implementation: 'wall' and 'cpu' seconds of every timed batch, and each round's mean wall time."""
    times = {impl: {"wall": [], "cpu": [], "rounds": []} for impl in executors}
    stream = itertools.cycle(loader)
    for r in range(repeats):
        for impl, ex in executors.items():  # alternate, so both see the same machine load
            ex.model.train()
            sample = [next(stream) for _ in range(batches + 2)]
            for batch in sample[:2]:  # warm-up
                train_step(ex, batch)
            wall, cpu = zip(*(train_step(ex, batch) for batch in sample[2:]))
            times[impl]["wall"] += wall
            times[impl]["cpu"] += cpu
            times[impl]["rounds"].append(sum(wall) / len(wall))
        print(f"round {r + 1}/{repeats}: " + ", ".join(f"{i} {1000 * t['rounds'][-1]:.1f} ms/batch" for i, t in times.items()),
              flush=True)
    return times


def time_epochs(executors: dict, loader, epochs: int) -> tuple[dict[str, list[float]], list[str]]:
    """Seconds of full training epochs per implementation, and a note of the load around each."""
    seconds: dict[str, list[float]] = {impl: [] for impl in executors}
    notes = []
    for e in range(epochs):
        for impl, ex in executors.items():
            before, start = os.getloadavg()[0], time.perf_counter()
            ex._train_epoch(loader)
            seconds[impl].append(time.perf_counter() - start)
            notes.append(f"{impl} {seconds[impl][-1]:.1f} s (load {before:.2f} -> {os.getloadavg()[0]:.2f})")
        print(f"epoch {e + 1}/{epochs}: " + ", ".join(f"{i} {s[-1]:.1f} s" for i, s in seconds.items()), flush=True)
    return seconds, notes


def summary(times: dict, epochs: dict[str, list[float]], num_batches: int) -> str:
    rows = []
    for impl, t in times.items():
        ms = 1000 * median(t["wall"])
        extrapolated = median(t["rounds"]) * num_batches
        epoch_s = median(epochs[impl]) if epochs[impl] else extrapolated  # judged on the measured epoch if any
        rows.append([impl, f"{ms:.1f}", f"{1000 * median(t['cpu']):.1f}", f"{extrapolated:.1f}",
                     f"{epoch_s:.1f}" if epochs[impl] else "-",
                     "stretch met" if epoch_s <= STRETCH_EPOCH_S else "met" if epoch_s <= TARGET_EPOCH_S else "NO",
                     f"{LIBCITY_BATCH_MS / ms:.2f}x", f"{LIBCITY_EPOCH_S / epoch_s:.2f}x"])
    header = ["rnn_impl", "ms/batch (median)", "CPU ms/batch", "epoch s (extrapolated)", "epoch s (measured)",
              f"target <= {TARGET_EPOCH_S:g} s (stretch {STRETCH_EPOCH_S:g})", "batch vs LibCity", "epoch vs LibCity"]
    return table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per implementation (default 5)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round (default 20)")
    parser.add_argument("--epochs", type=int, default=1, help="full epochs measured per implementation (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    require_dataset()
    os.chdir(BENCH_DIR)  # raw_data/ and libtraffic/cache/ resolve under bench/
    logging.basicConfig(level=logging.WARNING)
    plain_loader, plain = build("plain", None)
    executors = {"plain": plain, "fast": build("fast", plain.model.state_dict())[1]}
    num_batches = len(plain_loader)
    diff, scale, grad_rel = agreement(executors, next(iter(plain_loader)))
    print(f"fast vs plain on a training batch: max |pred diff| {diff:.2e} (pred scale {scale:.1f}), "
          f"max relative grad diff {grad_rel:.2e}")
    times = time_batches(executors, plain_loader, args.repeats, args.batches)
    epochs, loads = time_epochs(executors, plain_loader, args.epochs)
    tab = summary(times, epochs, num_batches)
    print(tab)
    rounds = "; ".join(f"{i} " + ", ".join(f"{1000 * m:.1f}" for m in t["rounds"]) for i, t in times.items())
    body = (f"Default GRU config (hidden 64, 1 layer, batch 64, Adam) on {DATASET} (207 sensors x 34272 steps): "
            f"{num_batches} training batches per epoch. ms/batch is the median over {args.repeats} rounds x "
            f"{args.batches} batches of zero_grad + forward + masked-MAE loss + backward + Adam step; "
            f"'extrapolated' = median round mean x {num_batches}; 'measured' = median of {args.epochs} full "
            "epoch(s) of the executor's training loop (data loading included); 'CPU ms/batch' is the process's "
            "CPU time per batch (all threads; with --threads 1 it measures the work itself whatever the other load, "
            "with more threads OpenMP's waiting counts too). LibCity reference: "
            f"{LIBCITY_EPOCH_S:g} s/epoch, {LIBCITY_BATCH_MS:g} ms/batch.\n\n{tab}\n\n"
            f"Equivalence on a training batch (same weights): max |fast - plain| prediction {diff:.2e} "
            f"(predictions up to {scale:.1f}); max relative gradient difference {grad_rel:.2e}.\n\n"
            f"Mean ms/batch of each round: {rounds} ms.\n" + (f"Measured epochs: {'; '.join(loads)}.\n" if loads else ""))
    write_section("bench_train", "Training epoch (bench/bench_train.py)", body)


if __name__ == "__main__":
    main()
