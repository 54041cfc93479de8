"""TrafficStateExecutor: trains, validates, checkpoints and tests a model.

The epoch loop is short; early stopping, LR stepping, best-checkpoint keeping and any outside
reporting (Ray Tune) are hooks called at the end of each epoch. Each training batch goes through
``_train_step``, the hook of executors with a curriculum (DCRNNExecutor passes the model the number
of optimiser steps taken so far, ``batches_seen``, which checkpoints keep). This module does not
import Ray.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from libtraffic.config.config_parser import model_config_keys
from libtraffic.evaluator import get_evaluator
from libtraffic.executor import checkpoint
from libtraffic.executor.best_metric import parse_best_metric
from libtraffic.executor.optim import build_optimizer, build_scheduler
from libtraffic.model import loss as losses
from libtraffic.utils import paths
from libtraffic.utils.device import get_device
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.progress import duration, progress_bar
from libtraffic.utils.safe_write import write_atomically

class TrainingDiverged(LibTrafficError):
    """The loss or the predictions became NaN/inf; the run stops instead of scoring garbage."""


# Called after every epoch with (epoch, {'loss': val_loss, 'train_loss': ..., 'lr': ..., 'epoch_time': ...});
# with a best_metric other than loss the dict also holds it by name (e.g. 'masked_MAE@3').
EpochHook = Callable[[int, dict[str, float]], None]


def serializable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool, list, type(None)))}


class TrafficStateExecutor:
    def __init__(self, config: Mapping[str, Any], model: nn.Module, data_feature: Mapping[str, Any],
                 logger: logging.Logger | None = None) -> None:
        self.config = config
        self.logger = logger or logging.getLogger("libtraffic")
        self.device = get_device(config, self.logger)
        self.model = model.to(self.device)
        self.scaler = data_feature["scaler"]
        self.output_dim = data_feature["output_dim"]
        self.num_nodes = data_feature["num_nodes"]
        self.exp_id = config["exp_id"]
        self.max_epoch = config["max_epoch"]
        if config["train"] and self.max_epoch < 1:
            raise LibTrafficError(
                f"max_epoch is {self.max_epoch}: nothing would be trained, and an untrained model would be saved "
                "and scored. Use --max_epoch 1 or more (or --train false --exp_id N to evaluate a saved model)."
            )
        if config["log_every"] < 1:
            raise LibTrafficError(f"log_every must be a positive integer (log every N epochs), got {config['log_every']}.")
        self.optimizer = build_optimizer(self.model, config)
        self.lr_scheduler = build_scheduler(self.optimizer, config)
        self.loss_fn = None if config["train_loss"] == "none" else losses.get_train_loss(config["train_loss"])
        self.evaluator = get_evaluator(config)
        self.best_metric = parse_best_metric(config["best_metric"], config["output_window"])
        self.start_epoch = 0
        self.best_val_loss = float("inf")  # the validation loss of the best epoch
        self.best_value = self.best_metric.worst  # the best epoch's best_metric (its loss when that is 'loss')
        self.best_epoch = -1
        self.best_state: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []
        self.wait = 0
        self.batches_seen = 0  # optimiser steps taken, over all epochs (curricula read it)
        self.stop = False
        self._data_generator: torch.Generator | None = None
        self._resumed_rng: dict[str, Any] | None = None
        self._writer = None
        self.logger.info("Model %s: %d trainable parameters, device %s", config["model"],
                         sum(p.numel() for p in self.model.parameters() if p.requires_grad), self.device)

    # ----- checkpoints (one self-describing dict, also used by tuning) -----
    def state(self, epoch: int) -> dict[str, Any]:
        """Checkpoint after ``epoch``: model, optimiser, scheduler, epoch, best loss and metric, config."""
        return {
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "epoch": epoch,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric.name,
            "best_value": self.best_value,
            "wait": self.wait,
            "batches_seen": self.batches_seen,
            "history": list(self.history),
            "config": serializable_config(self.config),
            "rng_state": checkpoint.rng_state(self._data_generator),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Resume from a checkpoint dict: training continues at state['epoch'] + 1."""
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        if self.lr_scheduler is not None and state.get("scheduler_state_dict"):
            self.lr_scheduler.load_state_dict(state["scheduler_state_dict"])
        self.start_epoch = state["epoch"] + 1
        self.best_val_loss = state["best_val_loss"]
        self.best_epoch = state["best_epoch"]
        self._load_best_value(state)
        self.wait = state.get("wait", self.start_epoch - 1 - self.best_epoch)
        # Checkpoints from before batches_seen come from models without a curriculum, which ignore it.
        self.batches_seen = state.get("batches_seen", 0)
        self.history = list(state.get("history", []))
        self._resumed_rng = state.get("rng_state")

    def _load_best_value(self, state: Mapping[str, Any]) -> None:
        """The best epoch's best_metric from a checkpoint; one chosen by another metric cannot continue."""
        saved = state.get("best_metric", "loss")  # checkpoints from before best_metric ranked by the loss
        if saved != self.best_metric.name:
            raise LibTrafficError(
                f"The checkpoint resumed from chose its best epoch by {saved}, this run by best_metric "
                f"{self.best_metric.name}: the best epoch so far would be wrong. Resume with --best_metric {saved} "
                "(hyper_tune.py: --metric), or train again with a new --exp_id."
            )
        self.best_value = state.get("best_value", state["best_val_loss"])

    def save_model(self, path: str | Path, state: Mapping[str, Any] | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # written whole, then renamed: a full disk never leaves a truncated checkpoint
        torch.save(dict(state) if state is not None else self.state(self.start_epoch - 1), buffer)
        write_atomically(path, [buffer.getbuffer()])
        self.logger.info("Saved model at %s", path)

    def read_checkpoint(self, path: Path, what: str, fix: str) -> dict[str, Any]:
        """A libtraffic checkpoint dict from ``path`` whose weights are now in the model; an empty,
        truncated, foreign or unsafe file (or a model of other settings) is a LibTrafficError naming
        ``what`` the file is for and ``fix``."""
        return self._take_own(path, checkpoint.load_file(path, self.device, what, fix), what, fix)

    def _take_own(self, path: Path, state: Any, what: str, fix: str) -> dict[str, Any]:
        """``state`` read from ``path`` if it is our checkpoint dict and fits the model (then loaded)."""
        if not checkpoint.is_ours(state):
            if checkpoint.is_libcitys(state):
                raise LibTrafficError(
                    f"{path} ({what}) is LibCity's saved model (model and optimiser weights only): it can be "
                    f"evaluated with --train false, but holds no epoch, scheduler or best epoch to resume from. {fix}"
                )
            raise LibTrafficError(
                f"{path} ({what}) holds {checkpoint.describe(state)}, not a libtraffic checkpoint (a dict with "
                f"{', '.join(checkpoint.REQUIRED_KEYS)}) nor LibCity's saved model (a tuple of the model's and the "
                f"optimiser's state_dict); was it written by another program? {fix}"
            )
        saved = state.get("config") if isinstance(state.get("config"), dict) else {}
        problems = checkpoint.weight_mismatches(self.model, state["model_state_dict"])
        if problems:
            differ = [f"--{k} {saved[k]}" for k in sorted(saved) if k not in ("train", "epoch") and saved[k] != self.config.get(k)]
            raise LibTrafficError(
                f"The model in {path} does not fit this run's settings; it was trained with "
                f"{' '.join(differ) or 'other settings'} ({checkpoint.summary(problems)}). Use the settings it was "
                "trained with."
            )
        self.model.load_state_dict(state["model_state_dict"])
        return state

    def load_model(self, path: str | Path) -> dict[str, Any]:
        """Load the weights of the model to evaluate (--train false): our checkpoint dict, whose data
        settings must be this run's, or LibCity's saved (model, optimiser) tuple."""
        path = Path(path)
        if not path.is_file():
            raise LibTrafficError(f"Model file {path} does not exist; train first (--train true) or check --exp_id.")
        what = "the saved model evaluated by --train false"
        fix = ("Rewrite it by resuming from an epoch checkpoint (--epoch K with the same --exp_id, K from the "
               "*_epoch<K>.tar files beside it), or train again with a new --exp_id.")
        content = checkpoint.load_file(path, self.device, what, fix)
        if checkpoint.is_libcitys(content):
            self._load_libcity_weights(path, content[0])
            return {"model_state_dict": content[0], "optimizer_state_dict": content[1]}
        state = self._take_own(path, content, what, fix)
        self._check_data_settings(path, state.get("config") or {})
        self.logger.info("Loaded model from %s", path)
        return state

    def _load_libcity_weights(self, path: Path, weights: Mapping[str, torch.Tensor]) -> None:
        problems = checkpoint.weight_mismatches(self.model, weights)
        if problems:
            keys = ", ".join(f"{k}={self.config[k]!r}" for k in model_config_keys(self.config["task"], self.config["model"]))
            raise LibTrafficError(
                f"{path} is LibCity's saved model, but its weights do not fit the {self.config['model']} built for "
                f"this run: {checkpoint.summary(problems)}. Check --model (LibCity names the file <MODEL>_<DATASET>.m "
                f"after the model it trained), the dataset's number of sensors ({self.num_nodes} here) and the "
                f"model's config keys ({keys or 'none'}) against the config at the top of LibCity's log."
            )
        self.model.load_state_dict(weights)
        self.logger.info("Loaded LibCity's saved model from %s", path)
        self.logger.warning(
            "%s is LibCity's checkpoint, which records no settings: whether it was trained with this run's data "
            "settings (scaler, windows, split rates, time features) cannot be checked.", path)

    def _check_data_settings(self, path: Path, saved: Mapping[str, Any]) -> None:
        """Refuse to score a model on other test windows or another scaling than it was trained with."""
        lines, unrecorded = checkpoint.data_differences(saved, self.config)
        if unrecorded:
            self.logger.warning("%s does not record the data setting(s) %s; they cannot be checked.",
                                path, ", ".join(unrecorded))
        if lines:
            raise LibTrafficError(
                f"--train false with other data settings than the model in {path} was trained with:\n  "
                + "\n  ".join(lines)
                + "\nIts predictions would be scored on other test windows or another scaling. Evaluate with "
                "the settings it was trained with (add them to the command), or train a new model with a new --exp_id."
            )

    def epoch_file(self, epoch: int) -> Path:
        folder = paths.experiment_dir(self.exp_id) / "model_cache"
        return folder / f"{self.config['model']}_{self.config['dataset']}_epoch{epoch}.tar"

    # ----- training -----
    def _batch_loss(self, batch: Mapping[str, torch.Tensor], **model_args: Any) -> torch.Tensor:
        """The training loss of ``batch``: the model's calculate_loss, or train_loss on its predictions;
        ``model_args`` go to the model (e.g. batches_seen for a curriculum)."""
        if self.loss_fn is None:
            return self.model.calculate_loss(batch, **model_args)
        y_true = self.scaler.inverse_transform(batch["y"][..., : self.output_dim])
        y_pred = self.scaler.inverse_transform(self.model.predict(batch, **model_args)[..., : self.output_dim])
        return self.loss_fn(y_pred, y_true)

    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _train_epoch(self, loader: Iterable, epoch: int) -> float:
        """One pass over the training batches; returns the mean loss of its optimiser steps."""
        self.model.train()
        losses: list[float] = []
        for i, batch in enumerate(progress_bar(loader, f"epoch {epoch}/{self.max_epoch - 1}")):
            losses += self._train_step(self._to_device(batch), f"epoch {epoch}, training batch {i}")
        return sum(losses) / max(len(losses), 1)

    def _train_step(self, batch: Mapping[str, torch.Tensor], where: str) -> list[float]:
        """Train on one batch; returns the loss of each optimiser step taken (here one).

        The hook of executors with a curriculum: an override may pass the model more arguments
        (DCRNN: batches_seen) or take several steps per batch (each through _optimizer_step, which
        counts it in batches_seen). ``where`` names the batch in error messages.
        """
        self.optimizer.zero_grad(set_to_none=True)
        return [self._optimizer_step(self._batch_loss(batch), where)]

    def _optimizer_step(self, loss: torch.Tensor, where: str) -> float:
        """Backward, clip, step on ``loss`` (the gradients are not zeroed here); returns its value and
        counts one in batches_seen. A non-finite loss or step stops training (TrainingDiverged)."""
        value = loss.item()
        if not math.isfinite(value):
            raise self._diverged(f"{where}: the loss is {value}")
        loss.backward()
        if self.config["clip_grad_norm"]:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config["max_grad_norm"])
        try:
            self.optimizer.step()
        except RuntimeError as err:  # torch refuses a step size beyond float32 (e.g. lr 1e38 in Adam)
            if "overflow" not in str(err):
                raise
            raise self._diverged(f"{where}: the optimiser step overflows") from err
        self.batches_seen += 1
        return value

    @torch.no_grad()
    def _validate(self, loader: Iterable, epoch: int) -> dict[str, float]:
        """{'loss': validation loss} and, when best_metric is an evaluator metric, {its name: value},
        scored by the evaluator's functions on the same pass (inverse-scaled, first output_dim features)."""
        self.model.eval()
        total, count = 0.0, 0
        per_batch = self.config["eval_pad_with_last_sample"]
        preds, truths = [], []
        for batch in loader:
            batch = self._to_device(batch)
            n = 1 if per_batch else batch["X"].shape[0]
            total, count = total + self._batch_loss(batch).item() * n, count + n
            if not self.best_metric.is_loss:
                truths.append(self.scaler.inverse_transform(batch["y"][..., : self.output_dim]).cpu())
                preds.append(self.scaler.inverse_transform(self.model.predict(batch)[..., : self.output_dim]).cpu())
        value = total / max(count, 1)
        if not math.isfinite(value):
            raise self._diverged(f"epoch {epoch}: the validation loss is {value}")
        if self.best_metric.is_loss:
            return {"loss": value}
        metric = self.best_metric
        score = self.evaluator.score(torch.cat(truths), torch.cat(preds), metric.base, metric.horizon)
        if not math.isfinite(score):
            raise LibTrafficError(
                f"Epoch {epoch}: best_metric {metric.name} is {score} on the validation split (no label counts, or "
                f"a zero label under an unmasked MAPE), so no epoch can be chosen by it. Choose another metric "
                "(e.g. the masked_ one, or loss)."
            )
        return {"loss": value, metric.name: score}

    def _diverged(self, where: str) -> TrainingDiverged:
        c = self.config
        return TrainingDiverged(
            f"Training diverged at {where} (the model's predictions or loss are no longer finite numbers); "
            f"nothing was scored. Try a smaller --learning_rate (now {c['learning_rate']}), gradient clipping "
            f"(--clip_grad_norm true --max_grad_norm 5; now {str(c['clip_grad_norm']).lower()}), or another "
            f"--learner (now {c['learner']}); check the data for extreme readings."
        )

    def train(self, train_loader: Iterable, eval_loader: Iterable, hooks: Iterable[EpochHook] = ()) -> float:
        """Train from start_epoch to max_epoch; returns the best epoch's validation loss (the best epoch is
        chosen by config ``best_metric``, the validation loss by default).

        After training, the model holds the best epoch's weights when load_best_epoch is true.
        Resuming (config ``epoch`` K) restores epoch K's weights, optimiser, scheduler, best epoch,
        early-stop counter and random state, so the resumed run equals an uninterrupted one.
        """
        self._data_generator = getattr(train_loader, "generator", None)
        if self.config["epoch"] > 0 and self.start_epoch == 0:
            self._resume_from(self.config["epoch"], train_loader)
        if self._resumed_rng is not None:
            checkpoint.set_rng_state(self._resumed_rng, self._data_generator)
            self._resumed_rng = None
        # The LR steps first, so the best checkpoint holds the scheduler state after its epoch, as the epoch file does.
        hooks = [self._step_lr, self._track_best, self._log_epoch, self._save_epoch_files, *hooks]
        self.stop = False
        for epoch in range(self.start_epoch, self.max_epoch):
            start = time.perf_counter()
            train_loss = self._train_epoch(train_loader, epoch)
            valid = self._validate(eval_loader, epoch)
            metrics = {**valid, "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                       "epoch_time": time.perf_counter() - start}
            self.history.append({"epoch": epoch, **metrics})
            for hook in hooks:
                hook(epoch, metrics)
            self.start_epoch = epoch + 1
            if self.stop:
                break
        if self.best_state is not None and self.config["load_best_epoch"]:
            self.model.load_state_dict(self.best_state["model_state_dict"])
            chosen = "" if self.best_metric.is_loss else f", {self.best_metric.name} {self.best_value:.4f}"
            self.logger.info("Loaded the best epoch %d (val_loss %.4f%s)", self.best_epoch, self.best_val_loss, chosen)
        self._close_writer()
        return self.best_val_loss

    def _resume_from(self, epoch: int, train_loader: Iterable = ()) -> None:
        """Load epoch ``epoch``'s checkpoint, and the best epoch so far from its own checkpoint; or
        continue from LibCity's epoch checkpoint (fine-tuning a model LibCity trained)."""
        fix = ("Resume from another epoch's checkpoint (--epoch K of another *_epoch<K>.tar beside it), or train "
               "again with a new --exp_id.")
        path = self._existing_epoch_file(epoch)
        what = f"the checkpoint --epoch {epoch} resumes from"
        content = checkpoint.load_file(path, self.device, what, fix)
        if checkpoint.is_libcitys_epoch(content):
            self._continue_libcitys(path, content, epoch, train_loader)
            return
        state = self._take_own(path, content, what, fix)
        best = state
        if state["best_epoch"] != epoch:
            path = self.epoch_file(state["best_epoch"])
            if state["best_epoch"] < 0 or not path.is_file():
                raise LibTrafficError(
                    f"Cannot resume: the best epoch so far ({state['best_epoch']}) has no checkpoint {path}, so the "
                    "best model could not be kept. Resume from the experiment whose epoch files are complete, or "
                    "train again with a new --exp_id."
                )
            best = self.read_checkpoint(path, "the best epoch's checkpoint", fix)
        self.load_state(state)  # after reading the best one: read_checkpoint loads weights into the model
        # A copy: the optimiser may share its state tensors with the dict it was loaded from.
        self.best_state = copy.deepcopy(best)
        self.logger.info("Resuming training after epoch %d (best epoch so far %d)", epoch, self.best_epoch)

    def _continue_libcitys(self, path: Path, content: Mapping[str, Any], epoch: int, train_loader: Iterable) -> None:
        """Continue training after epoch ``epoch`` from LibCity's ``*_epoch<K>.tar``: its model and
        optimiser state. It records no scheduler, best epoch or random state: the scheduler continues
        at the epoch count, the best epoch is chosen among the epochs trained from here, and the
        random state is this run's seed. Curricula count ``epoch + 1`` epochs of batches as seen."""
        if content["epoch"] != epoch:
            raise LibTrafficError(
                f"{path} is LibCity's checkpoint of epoch {content['epoch']}, not of epoch {epoch} as its name says. "
                f"Rename it to match its epoch, or resume with --epoch {content['epoch']}.")
        self._load_libcity_weights(path, content["model_state_dict"])
        try:
            saved = content["optimizer_state_dict"]
            wanted = {k for group in self.optimizer.param_groups for k in group if k != "params"}
            missing = wanted - {k for group in saved["param_groups"] for k in group}
            if missing:  # torch loads another optimiser's state without a word, then fails in step()
                raise ValueError(f"its parameter groups lack {', '.join(sorted(missing))}")
            self.optimizer.load_state_dict(saved)
        except (ValueError, KeyError, TypeError) as err:
            raise LibTrafficError(
                f"{path} is LibCity's checkpoint, but its optimiser state does not fit this run's --learner "
                f"{self.config['learner']} ({err}). Use the learner LibCity trained it with (see the config at the "
                "top of LibCity's log).") from err
        self.start_epoch = epoch + 1
        if self.lr_scheduler is not None and not isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # The optimiser's learning rate is LibCity's after epoch K; the scheduler only needs its count.
            self.lr_scheduler.last_epoch = self.start_epoch
            self.lr_scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        try:
            self.batches_seen = self.start_epoch * len(train_loader)
        except TypeError:
            self.batches_seen = 0
        self.logger.info(
            "Continuing LibCity's training after its epoch %d (model and optimiser from %s); the best epoch is "
            "chosen among the epochs trained from here", epoch, path)

    def _existing_epoch_file(self, epoch: int) -> Path:
        path = self.epoch_file(epoch)
        if not path.is_file():
            raise LibTrafficError(f"epoch {epoch}: no checkpoint {path} to resume from (saved_model must have been true).")
        return path

    # ----- epoch-end hooks -----
    def _track_best(self, epoch: int, metrics: dict[str, float]) -> None:
        """The best epoch so far by best_metric (min, or max for R2 / EVAR); early stopping counts from it."""
        value = metrics[self.best_metric.name]
        if self.best_metric.better(value, self.best_value):
            self.wait = 0
            self.best_value, self.best_val_loss, self.best_epoch = value, metrics["loss"], epoch
            # A deep copy: state() shares the live weights and optimiser moments, which later epochs change.
            self.best_state = copy.deepcopy(self.state(epoch))
        else:
            self.wait += 1
            if self.config["use_early_stop"] and self.wait >= self.config["patience"]:
                self.logger.warning("Early stopping at epoch %d (no improvement for %d epochs)", epoch, self.wait)
                self.stop = True

    def _step_lr(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.lr_scheduler is None:
            return
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step(metrics["loss"])
        else:
            self.lr_scheduler.step()

    def _log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        writer = self._tensorboard()
        if writer is not None:
            writer.add_scalar("training loss", metrics["train_loss"], epoch)
            writer.add_scalar("eval loss", metrics["loss"], epoch)
        if (epoch + 1) % self.config["log_every"] == 0 or epoch + 1 == self.max_epoch:
            chosen = "" if self.best_metric.is_loss else f", val {self.best_metric.name}: {metrics[self.best_metric.name]:.4f}"
            self.logger.info(
                "Epoch [%d/%d] train_loss: %.4f, val_loss: %.4f%s, lr: %.6f, %.2fs%s%s", epoch, self.max_epoch,
                metrics["train_loss"], metrics["loss"], chosen, metrics["lr"], metrics["epoch_time"],
                "  (best)" if epoch == self.best_epoch else "", self._time_left(epoch),
            )

    def _time_left(self, epoch: int) -> str:
        """', about 4.5 min left': the epochs still to run at the mean epoch time of this run so far."""
        left = self.max_epoch - epoch - 1
        if left <= 0 or self.stop:
            return ""
        times = [h["epoch_time"] for h in self.history[-10:]]
        return f", about {duration(left * sum(times) / len(times))} left"

    def _save_epoch_files(self, epoch: int, metrics: dict[str, float]) -> None:
        # As LibCity: an epoch checkpoint whenever validation improves; also the last one, so
        # `--epoch N` can resume. Tuning trials checkpoint through Ray instead (hyper_tune).
        if self.config["hyper_tune"] or not self.config["saved_model"]:
            return
        if epoch == self.best_epoch or epoch + 1 == self.max_epoch or self.stop:
            self.save_model(self.epoch_file(epoch), self.state(epoch))

    def _tensorboard(self):
        if self._writer is None and not self.config["hyper_tune"]:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(paths.experiment_dir(self.exp_id)))
        return self._writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ----- testing -----
    @torch.no_grad()
    def _predict(self, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_pred, y_true) over ``loader``, inverse-scaled, first output_dim features, on the CPU."""
        self.model.eval()
        preds, truths = [], []
        for batch in loader:
            batch = self._to_device(batch)
            out = self.model.predict(batch)
            truths.append(self.scaler.inverse_transform(batch["y"][..., : self.output_dim]).cpu())
            preds.append(self.scaler.inverse_transform(out[..., : self.output_dim]).cpu())
        return torch.cat(preds), torch.cat(truths)

    def score(self, loader: Iterable) -> dict[str, float]:
        """Metrics per horizon over ``loader`` (as evaluate()), writing no file."""
        y_pred, y_true = self._predict(loader)
        self.evaluator.clear()
        self.evaluator.collect({"y_true": y_true, "y_pred": y_pred})
        return self.evaluator.evaluate()

    def evaluate(self, test_loader: Iterable) -> dict[str, float]:
        """Test metrics per horizon; saves predictions (npz) and results (csv/json)."""
        y_pred, y_true = self._predict(test_loader)
        folder = paths.evaluate_cache_dir(self.exp_id)
        folder.mkdir(parents=True, exist_ok=True)
        name = self.evaluator.reserve_name(folder)
        if self.config["save_predictions"]:
            # Uncompressed: compressing these float arrays took ~5 s at METR_LA size and saved little.
            buffer = io.BytesIO()
            np.savez(buffer, prediction=y_pred.numpy(), truth=y_true.numpy())
            write_atomically(folder / f"{name}_predictions.npz", [buffer.getbuffer()])
        self.evaluator.clear()
        self.evaluator.collect({"y_true": y_true, "y_pred": y_pred})
        result = self.evaluator.evaluate()
        self.evaluator.save_result(folder, name, result)  # also logs the metrics table
        return result
