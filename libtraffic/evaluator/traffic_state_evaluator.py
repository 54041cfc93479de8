"""Per-horizon metrics for traffic state prediction, saved as csv/json like LibCity."""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from libtraffic.model.loss import MASK_VAL_METRICS, METRICS
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.registry import lookup
from libtraffic.utils.safe_write import write_text

logger = logging.getLogger(__name__)

#: evaluator_mode -> the time steps (a slice of axis 1) that horizon i is scored on.
EVALUATOR_MODES: dict[str, Callable[[int], slice]] = {
    "single": lambda i: slice(i - 1, i),
    "average": lambda i: slice(0, i),
}


def _write_json(result: Mapping[str, float], table: pd.DataFrame, path: Path) -> None:
    write_text(path, json.dumps(result, indent=4))


def _write_csv(result: Mapping[str, float], table: pd.DataFrame, path: Path) -> None:
    write_text(path, table.to_csv())


#: save_mode -> writer of one result file (file suffix = the mode name).
SAVE_MODES: dict[str, Callable[[Mapping[str, float], pd.DataFrame, Path], None]] = {
    "csv": _write_csv,
    "json": _write_json,
}


def _names(value: Any, key: str) -> list[str]:
    """A config value that lists names: a list of strings, or one string meaning a list of one."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        if len(set(value)) != len(value):
            raise LibTrafficError(f"Config key '{key}' lists a name twice: {list(value)}.")
        return list(value)
    raise LibTrafficError(f"Config key '{key}' must be a list of names, got {value!r}.")


def _mask_val(config: Mapping[str, Any]) -> float | None:
    """LibCity's evaluator threshold: masked_MAE / masked_MAPE also ignore labels below it.

    ``eval_mask_val`` (LibCity's current name) wins over ``mask_val`` (its older name).
    """
    for key in ("eval_mask_val", "mask_val"):
        value = config[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise LibTrafficError(f"Config key '{key}' must be a number (labels below it are ignored by "
                                  f"masked_MAE and masked_MAPE) or null, got {value!r}.")
        return float(value)
    return None


class TrafficStateEvaluator:
    """Collects (y_true, y_pred) batches and scores them per prediction horizon.

    Config keys: ``metrics`` (names from :data:`libtraffic.model.loss.METRICS`),
    ``evaluator_mode`` ('single': horizon i scores step i only; 'average': steps 1..i),
    ``save_mode`` ('csv' and/or 'json'), ``eval_mask_val`` / ``mask_val`` (see _mask_val),
    ``output_window``, ``model`` and ``dataset``.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.metrics = _names(config["metrics"], "metrics")
        if not self.metrics:
            raise LibTrafficError("Config key 'metrics' is empty; name at least one metric.")
        self._metric_fns = {
            m: lookup(METRICS, m, "metric", where="config key 'metrics'") for m in self.metrics
        }
        self.mode = config["evaluator_mode"]
        self._steps = lookup(
            EVALUATOR_MODES, self.mode, "evaluator_mode", where="config key 'evaluator_mode'"
        )
        self.save_modes = _names(config["save_mode"], "save_mode")
        self._writers = {
            m: lookup(SAVE_MODES, m, "save_mode", where="config key 'save_mode'")
            for m in self.save_modes
        }
        self.output_window = config["output_window"]
        window = self.output_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise LibTrafficError(
                f"Config key 'output_window' must be a positive integer, got {window!r}."
            )
        self.mask_val = _mask_val(config)
        self.model = config["model"]
        self.dataset = config["dataset"]
        self._true: list[Tensor] = []
        self._pred: list[Tensor] = []

    def collect(self, batch: dict[str, Tensor]) -> None:
        """Add ``batch['y_true']`` and ``batch['y_pred']``, both
        [num_samples, output_window, num_nodes, output_dim] in original (inverse-scaled) units."""
        y_true, y_pred = batch["y_true"], batch["y_pred"]
        if y_true.shape != y_pred.shape:
            raise ValueError(
                f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ"
            )
        if y_true.dim() != 4 or y_true.shape[1] != self.output_window:
            raise ValueError(
                f"expected [samples, {self.output_window}, nodes, dim], got {tuple(y_true.shape)}"
            )
        # Scored in float64: readings near 1e31 square beyond float32's range (an MSE of inf).
        self._true.append(y_true.detach().cpu().double())
        self._pred.append(y_pred.detach().cpu().double())

    def evaluate(self) -> dict[str, float]:
        """Score everything collected: ``{'<metric>@<i>': value}`` for i = 1..output_window,
        keys ordered horizon first, then metrics in config order (as LibCity)."""
        if not self._true:
            raise RuntimeError("evaluate() called before any collect()")
        y_true, y_pred = torch.cat(self._true), torch.cat(self._pred)
        result: dict[str, float] = {}
        with torch.no_grad():
            for i in range(1, self.output_window + 1):
                steps = self._steps(i)
                t, p = y_true[:, steps], y_pred[:, steps]
                for name, fn in self._metric_fns.items():
                    result[f"{name}@{i}"] = float(fn(p, t, **self._extra(name)))
        return result

    def _extra(self, name: str) -> dict[str, float]:
        """masked_MAE / masked_MAPE also ignore labels below eval_mask_val (as LibCity's evaluator)."""
        return {"min_label": self.mask_val} if self.mask_val is not None and name in MASK_VAL_METRICS else {}

    def score(self, y_true: Tensor, y_pred: Tensor, name: str, horizon: int | None = None) -> float:
        """Metric ``name`` (any of METRICS, whether or not config 'metrics' lists it) at ``horizon``
        (1-based, scored on the steps evaluator_mode gives it), or the mean over all horizons when None;
        honours eval_mask_val as evaluate() does. Inputs as for collect()."""
        fn = lookup(METRICS, name, "metric")
        extra = self._extra(name)
        horizons = [horizon] if horizon is not None else range(1, self.output_window + 1)
        y_true, y_pred = y_true.double(), y_pred.double()
        with torch.no_grad():
            values = [float(fn(y_pred[:, self._steps(i)], y_true[:, self._steps(i)], **extra)) for i in horizons]
        return sum(values) / len(values)

    def _frame(self, result: Mapping[str, float]) -> pd.DataFrame:
        """Rows horizons 1..output_window, columns metrics in config order."""
        horizons = range(1, self.output_window + 1)
        data = {m: [result[f"{m}@{i}"] for i in horizons] for m in self.metrics}
        return pd.DataFrame(data, index=pd.Index(horizons, name="horizon"))

    def format_table(self, result: Mapping[str, float]) -> str:
        """A text table of ``result`` for the terminal: horizons by metrics, 4 decimals."""
        return self._frame(result).to_string(float_format=lambda v: f"{v:.4f}")

    def save_result(self, save_path: str | Path, filename: str | None = None,
                    result: Mapping[str, float] | None = None) -> list[Path]:
        """Evaluate and write ``<filename>.csv`` and/or ``<filename>.json`` (per ``save_mode``)
        into ``save_path`` (created if missing). The default filename is
        ``<YYYY_MM_DD_HH_MM_SS>_<model>_<dataset>``. ``result``: what evaluate() returned, if the caller
        has it (scoring METR_LA's test split takes seconds). Logs the table; returns the written paths."""
        result = self.evaluate() if result is None else result
        save_dir = Path(save_path)
        save_dir.mkdir(parents=True, exist_ok=True)
        if filename is None:
            filename = self.reserve_name(save_dir)
        table = self._frame(result)
        written = []
        for mode, write in self._writers.items():
            path = save_dir / f"{filename}.{mode}"
            write(result, table, path)
            written.append(path)
        logger.info("Evaluation (%s mode):\n%s", self.mode, self.format_table(result))
        for path in written:
            logger.info("Saved evaluation to %s", path)
        return written

    def reserve_name(self, folder: Path) -> str:
        """A name for this evaluation's files in ``folder``: LibCity's <YYYY_MM_DD_HH_MM_SS>_<model>_<dataset>,
        or with _2, _3, ... appended when another evaluation of the same second has it (two --train false
        runs at once). The name is claimed by creating its first file exclusively (the writers then
        replace it), so concurrent runs never share one."""
        folder.mkdir(parents=True, exist_ok=True)
        base = f"{datetime.datetime.now():%Y_%m_%d_%H_%M_%S}_{self.model}_{self.dataset}"
        first = f".{self.save_modes[0]}" if self.save_modes else "_predictions.npz"
        for n in itertools.count(1):
            name = base if n == 1 else f"{base}_{n}"  # sorts after base: the report's newest stays the newest
            try:
                os.close(os.open(folder / f"{name}{first}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            return name
        raise AssertionError("unreachable")

    def clear(self) -> None:
        """Forget everything collected."""
        self._true.clear()
        self._pred.clear()
