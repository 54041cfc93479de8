"""Windowing, splitting and batching by index: windows are never materialised as copies.

Sample s has input steps [s, s + input_window) and target steps
[s + input_window, s + input_window + output_window) of the (T, N, F) array.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

SECONDS_PER_DAY = 86400


def num_samples(num_steps: int, input_window: int, output_window: int) -> int:
    return num_steps - input_window - output_window + 1


def split_sizes(samples: int, train_rate: float, eval_rate: float) -> tuple[int, int, int]:
    """(train, valid, test) sample counts, rounded as LibCity: test and train rounded, valid the rest."""
    num_test = round(samples * (1 - train_rate - eval_rate))
    num_train = round(samples * train_rate)
    return num_train, samples - num_test - num_train, num_test


def window_counts(num_windows: int, window: int) -> np.ndarray:
    """How many of the windows starting at 0 .. num_windows - 1, each ``window`` steps long, hold each
    step 0 .. num_windows + window - 2: (steps,) int64, rising 1, 2, .. to at most
    min(num_windows, window) and falling back to 1."""
    steps = num_windows + window - 1
    t = np.arange(steps)
    return np.minimum.reduce([t + 1, steps - t, np.full(steps, min(num_windows, window))])


def time_in_day(times: np.ndarray) -> np.ndarray:
    """Fraction of the day elapsed at each time, (T,) float32 in [0, 1)."""
    seconds = times.astype("datetime64[s]").astype(np.int64)
    return (seconds % SECONDS_PER_DAY / SECONDS_PER_DAY).astype(np.float32)


def day_in_week(times: np.ndarray) -> np.ndarray:
    """One-hot weekday (Monday = column 0), (T, 7) float32."""
    days = times.astype("datetime64[D]").astype(np.int64)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    return np.eye(7, dtype=np.float32)[weekday]


def split_indices(
    split: tuple[int, int, int], batch_size: int, pad_train: bool, pad_eval: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample start indices of train / valid / test, in time order.

    With ``pad_train`` the training indices are padded with the last sample to a whole number of
    batches (LibCity's pad_with_last_sample). Evaluation splits are padded the same way only with
    ``pad_eval`` (LibCity's scoring, which counts the copies); by default every validation and
    test sample counts exactly once.
    """
    num_train, num_val, num_test = split
    train = np.arange(num_train)
    val = np.arange(num_train, num_train + num_val)
    test = np.arange(num_train + num_val, num_train + num_val + num_test)
    return (_pad(train, batch_size) if pad_train else train, _pad(val, batch_size) if pad_eval else val,
            _pad(test, batch_size) if pad_eval else test)


def _pad(starts: np.ndarray, batch_size: int) -> np.ndarray:
    """``starts`` followed by copies of its last entry up to a multiple of ``batch_size``."""
    missing = -len(starts) % batch_size
    return np.concatenate([starts, np.full(missing, starts[-1])]) if missing and len(starts) else starts


class WindowDataset(Dataset):
    """Windows of a shared (T, N, F) tensor, gathered a whole batch at a time."""

    def __init__(self, data: np.ndarray, starts: np.ndarray, input_window: int, output_window: int) -> None:
        with warnings.catch_warnings():
            # Arrays from Ray's object store are read-only; we never write to them.
            warnings.simplefilter("ignore", UserWarning)
            self.data = torch.from_numpy(data)
        self.starts = torch.as_tensor(starts, dtype=torch.long)
        self.in_offsets = torch.arange(input_window)
        self.out_offsets = torch.arange(input_window, input_window + output_window)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        start = self.starts[torch.as_tensor(indices, dtype=torch.long)].unsqueeze(1)
        return {"X": self.data[start + self.in_offsets], "y": self.data[start + self.out_offsets]}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}


def _as_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


class TimeOrderSampler(Sampler[int]):
    """Samples 0 .. n-1 in time order; each pass first takes one number from torch's global generator,
    as a shuffling loader does. LibCity shuffles its validation batches: taking the same draw keeps
    torch's global random stream (dropout, the next epoch's training order) where LibCity's is, while
    our validation runs in time order."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_()  # RandomSampler's per-pass seed, drawn and unused
        return iter(range(self.n))


def make_loader(
    data: np.ndarray, starts: np.ndarray, input_window: int, output_window: int,
    batch_size: int, order: str, num_workers: int,
) -> DataLoader:
    """Batches {'X': [B, input_window, N, F], 'y': [B, output_window, N, F]}.

    ``order``: 'shuffled' (a new permutation each pass), 'time' or 'time, drawing as shuffled'
    (TimeOrderSampler). Like LibCity's loaders, every random number comes from torch's global
    generator (seeded by the run's seed), so a seed gives LibCity's training order, and resuming
    restores the order with torch's random state.
    """
    dataset = WindowDataset(data, starts, input_window, output_window)
    samplers = {"shuffled": RandomSampler, "time": SequentialSampler,
                "time, drawing as shuffled": lambda ds: TimeOrderSampler(len(ds))}
    return DataLoader(dataset, batch_size=batch_size, sampler=samplers[order](dataset), num_workers=num_workers,
                      collate_fn=_as_batch, persistent_workers=num_workers > 0)
