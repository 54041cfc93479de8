"""TrafficStateExecutor: training, optimisers, LR schedulers, losses, early stopping, checkpoints."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.synthetic import generate_speeds, write_synthetic_dataset
from libtraffic.executor import get_executor
from libtraffic.executor.optim import lr_lambda_from_text
from libtraffic.model import get_model
from libtraffic.model.loss import TRAIN_LOSSES
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

SMALL = {"input_window": 6, "output_window": 3, "hidden_size": 16, "max_epoch": 2, "exp_id": "ex", "log_level": "WARNING",
         "add_time_in_day": False}


def build(dataset: str, **overrides):
    """(executor, (train, valid, test) loaders) for the GRU on ``dataset``."""
    config = ConfigParser("traffic_state_pred", "GRU", dataset, other_args={**SMALL, **overrides})
    torch.manual_seed(config["seed"])
    data = get_dataset(config)
    loaders = data.get_data()
    feature = data.get_data_feature()
    return get_executor(config, get_model(config, feature), feature), loaders


def params(executor) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in executor.model.state_dict().items()}


def test_training_lowers_validation_loss(tiny_dataset: str) -> None:
    executor, (train, valid, _) = build(tiny_dataset, max_epoch=3)
    before = executor._validate(valid, 0)["loss"]
    best = executor.train(train, valid)
    assert [h["epoch"] for h in executor.history] == [0, 1, 2]
    assert best == min(h["loss"] for h in executor.history)
    assert best < 0.6 * before
    assert executor.history[-1]["train_loss"] < executor.history[0]["train_loss"]
    # load_best_epoch: the model now holds the best epoch's weights.
    assert executor._validate(valid, 0)["loss"] == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("learner, cls, group", [
    ("adam", torch.optim.Adam, {"betas": (0.8, 0.999), "eps": 1e-8, "weight_decay": 0.001}),
    ("sgd", torch.optim.SGD, {"momentum": 0.5, "weight_decay": 0.001}),
    ("adagrad", torch.optim.Adagrad, {"eps": 1e-8, "weight_decay": 0.001}),
    ("rmsprop", torch.optim.RMSprop, {"alpha": 0.9, "momentum": 0.5, "eps": 1e-8}),
])
def test_learners(tiny_dataset: str, learner: str, cls: type, group: dict) -> None:
    executor, (train, valid, _) = build(tiny_dataset, learner=learner, learning_rate=0.005, lr_beta1=0.8,
                                        lr_momentum=0.5, lr_alpha=0.9, weight_decay=0.001)
    assert type(executor.optimizer) is cls
    settings = executor.optimizer.param_groups[0]
    assert settings["lr"] == 0.005
    for key, value in group.items():
        assert settings[key] == value, key
    start = params(executor)
    executor.train(train, valid)
    assert len(executor.history) == 2 and all(math.isfinite(h["loss"]) for h in executor.history)
    assert any(not torch.equal(start[k], v) for k, v in params(executor).items())


def test_bad_learners(tiny_dataset: str) -> None:
    with pytest.raises(LibTrafficError, match="learner 'sparse_adam' needs sparse gradients"):
        build(tiny_dataset, learner="sparse_adam")
    with pytest.raises(LibTrafficError, match=r"Unknown learner 'adma' \(from config key 'learner'\)\. Did you mean 'adam'\?"):
        build(tiny_dataset, learner="adma")


LR0 = 0.01


@pytest.mark.parametrize("scheduler, settings, lrs", [
    ("multisteplr", {"steps": [1], "lr_decay_ratio": 0.1}, [LR0, LR0 * 0.1, LR0 * 0.1]),
    ("steplr", {"step_size": 1, "lr_decay_ratio": 0.5}, [LR0, LR0 * 0.5, LR0 * 0.25]),
    ("exponentiallr", {"lr_decay_ratio": 0.5}, [LR0, LR0 * 0.5, LR0 * 0.25]),
    ("cosineannealinglr", {"lr_T_max": 4, "lr_eta_min": 0.001},
     [LR0, 0.001 + (LR0 - 0.001) * (1 + math.cos(math.pi / 4)) / 2, 0.001 + (LR0 - 0.001) / 2]),
    ("lambdalr", {"lr_lambda": "0.5 ** epoch"}, [LR0, LR0 * 0.5, LR0 * 0.25]),
    ("lambdalr", {"lr_lambda": "1 / (epoch + 1)"}, [LR0, LR0 / 2, LR0 / 3]),
    # threshold 10: no loss counts as an improvement, so with patience 0 every epoch cuts the LR.
    ("reducelronplateau", {"lr_patience": 0, "lr_threshold": 10.0, "lr_decay_ratio": 0.5}, [LR0, LR0 * 0.5, LR0 * 0.25]),
])
def test_lr_schedulers(tiny_dataset: str, scheduler: str, settings: dict, lrs: list[float]) -> None:
    executor, (train, valid, _) = build(tiny_dataset, lr_decay=True, lr_scheduler=scheduler, learning_rate=LR0, **settings)
    executor.train(train, valid)
    assert [h["lr"] for h in executor.history] == pytest.approx(lrs[:2], rel=1e-9)
    assert executor.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[2], rel=1e-9)


def test_no_scheduler_without_lr_decay(tiny_dataset: str) -> None:
    executor, _ = build(tiny_dataset, lr_scheduler="steplr", lr_decay=False)
    assert executor.lr_scheduler is None


def test_bad_schedulers(tiny_dataset: str) -> None:
    with pytest.raises(LibTrafficError, match=r"Unknown lr_scheduler 'steplrr'.*Did you mean 'steplr'\?"):
        build(tiny_dataset, lr_decay=True, lr_scheduler="steplrr")
    with pytest.raises(LibTrafficError, match="only numbers, 'epoch'"):
        build(tiny_dataset, lr_decay=True, lr_scheduler="lambdalr", lr_lambda="__import__('os').getcwd()")
    with pytest.raises(LibTrafficError, match=r"step_size must be a positive number of epochs, got 0"):
        build(tiny_dataset, lr_decay=True, lr_scheduler="steplr", step_size=0)
    with pytest.raises(LibTrafficError, match=r"lr_T_max must be a positive number of epochs, got 0"):
        build(tiny_dataset, lr_decay=True, lr_scheduler="cosineannealinglr", lr_T_max=0)
    with pytest.raises(LibTrafficError, match=r"steps must list epoch numbers \(e\.g\. \[5, 20\]\), got \['a', 'b'\]"):
        build(tiny_dataset, lr_decay=True, lr_scheduler="multisteplr", steps="a,b")
    with pytest.raises(LibTrafficError, match="is not an expression of epoch"):
        lr_lambda_from_text("0.5 **")
    assert lr_lambda_from_text("max(0.1, 1 - epoch / 10)")(5) == 0.5


@pytest.mark.parametrize("name", ["none", *TRAIN_LOSSES])
def test_each_train_loss_trains(workdir, name: str) -> None:
    # The unmasked MAPE is infinite at a zero (missing) reading, as in LibCity: that loss trains on complete data.
    write_synthetic_dataset(workdir / "raw_data", "TINY", num_nodes=6, num_days=3, seed=1,
                            missing_rate=0.0 if name == "mape" else 0.02)
    executor, (train, valid, _) = build("TINY", train_loss=name, max_epoch=1)
    start = params(executor)
    executor.train(train, valid)
    assert math.isfinite(executor.history[0]["train_loss"]) and math.isfinite(executor.history[0]["loss"])
    assert any(not torch.equal(start[k], v) for k, v in params(executor).items())


def _masked(fn):
    # A zero reading comes back from the scaler's round trip a few 1e-6 off zero.
    return lambda p, y: fn(p[np.abs(y) > 1e-3], y[np.abs(y) > 1e-3])


@pytest.mark.parametrize("name, reference", [
    ("mae", lambda p, y: np.mean(np.abs(p - y))),
    ("mse", lambda p, y: np.mean((p - y) ** 2)),
    ("rmse", lambda p, y: np.sqrt(np.mean((p - y) ** 2))),
    ("masked_mae", _masked(lambda p, y: np.mean(np.abs(p - y)))),
    ("masked_mape", _masked(lambda p, y: np.mean(np.abs(p - y) / np.abs(y)))),
    ("none", _masked(lambda p, y: np.mean(np.abs(p - y)))),
])
def test_train_loss_is_computed_in_original_units(tiny_dataset: str, name: str, reference) -> None:
    executor, (_, _, test) = build(tiny_dataset, train_loss=name)
    executor.model.eval()
    batch = next(iter(test))
    scaler = executor.scaler
    with torch.no_grad():
        loss = float(executor._batch_loss(batch))
        pred = scaler.inverse_transform(executor.model.predict(batch)).numpy()
    truth = scaler.inverse_transform(batch["y"]).numpy()
    assert (np.abs(truth) < 1e-3).sum() > 0  # the synthetic data has missing readings: masking matters
    assert loss == pytest.approx(float(reference(pred.astype(np.float64), truth.astype(np.float64))), rel=1e-4)


def test_unknown_train_loss(tiny_dataset: str) -> None:
    with pytest.raises(LibTrafficError, match=r"Unknown train_loss 'maskedmae'.*Did you mean 'masked_mae'\?"):
        build(tiny_dataset, train_loss="maskedmae")


def test_gradient_clipping(tiny_dataset: str) -> None:
    for clip, check in ((True, lambda d: d <= 1e-3 * (1 + 1e-4)), (False, lambda d: d > 1e-2)):
        executor, (train, _, _) = build(tiny_dataset, learner="sgd", learning_rate=1.0, clip_grad_norm=clip,
                                        max_grad_norm=1e-3)
        start = params(executor)
        executor._train_epoch([next(iter(train))], 0)
        delta = torch.cat([(v - start[k]).reshape(-1) for k, v in params(executor).items()]).norm()
        assert check(float(delta)), (clip, float(delta))


def test_early_stopping(tiny_dataset: str, caplog: pytest.LogCaptureFixture) -> None:
    # A learning rate of 1e-30 leaves float32 weights unchanged: never an improvement after epoch 0.
    executor, (train, valid, _) = build(tiny_dataset, learning_rate=1e-30, use_early_stop=True, patience=2, max_epoch=10)
    executor.train(train, valid)
    assert [h["epoch"] for h in executor.history] == [0, 1, 2]
    assert executor.best_epoch == 0
    assert "Early stopping at epoch 2 (no improvement for 2 epochs)" in caplog.text
    # The stopping epoch is checkpointed so training can resume from it.
    assert executor.epoch_file(2).is_file()


CHECKPOINT_KEYS = {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "epoch", "best_val_loss",
                   "best_epoch", "best_metric", "best_value", "wait", "batches_seen", "history", "config",
                   "rng_state"}


def test_checkpoint_dict_and_load_state(tiny_dataset: str) -> None:
    executor, (train, valid, _) = build(tiny_dataset, lr_decay=True, lr_scheduler="steplr", step_size=1,
                                        lr_decay_ratio=0.5, load_best_epoch=False)
    executor.train(train, valid)
    saved = torch.load(executor.epoch_file(1), weights_only=True)
    assert set(saved) == CHECKPOINT_KEYS
    assert saved["epoch"] == 1 and saved["best_epoch"] == executor.best_epoch
    assert saved["best_val_loss"] == executor.best_val_loss
    assert saved["config"]["hidden_size"] == 16 and saved["config"]["dataset"] == tiny_dataset
    assert saved["scheduler_state_dict"]["last_epoch"] == 2
    assert [h["epoch"] for h in saved["history"]] == [0, 1]
    for key, value in params(executor).items():
        assert torch.equal(saved["model_state_dict"][key], value), key

    fresh, _ = build(tiny_dataset, lr_decay=True, lr_scheduler="steplr", step_size=1, lr_decay_ratio=0.5,
                     max_epoch=3, exp_id="ex2")
    fresh.load_state(saved)
    assert fresh.start_epoch == 2
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)
    moments = fresh.optimizer.state_dict()["state"]
    for index, state in executor.optimizer.state_dict()["state"].items():
        assert torch.equal(moments[index]["exp_avg"], state["exp_avg"])
    for key, value in params(executor).items():
        assert torch.equal(fresh.model.state_dict()[key], value), key
    fresh.train(train, valid)
    assert [h["epoch"] for h in fresh.history] == [0, 1, 2]
    assert fresh.history[2]["lr"] == pytest.approx(0.0025)


def test_best_state_keeps_its_own_optimizer_state(tiny_dataset: str) -> None:
    executor, (train, valid, _) = build(tiny_dataset)
    executor._train_epoch(train, 0)
    executor.wait = 0
    executor._track_best(0, {"loss": 1.0})
    snapshot = copy.deepcopy(executor.optimizer.state_dict()["state"])
    executor._train_epoch(train, 0)  # a later, worse epoch: the best checkpoint must not change
    best = executor.best_state["optimizer_state_dict"]["state"]
    for index, state in snapshot.items():
        assert torch.equal(best[index]["exp_avg"], state["exp_avg"]), index
        assert torch.equal(best[index]["step"], state["step"]), index


def test_resume_from_epoch_file(tiny_dataset: str, caplog: pytest.LogCaptureFixture) -> None:
    first, (train, valid, _) = build(tiny_dataset, exp_id="res")
    first.train(train, valid)
    saved = torch.load(first.epoch_file(1), weights_only=True)
    resumed, (train, valid, _) = build(tiny_dataset, exp_id="res", epoch=1, max_epoch=3)
    with caplog.at_level(logging.INFO, logger="libtraffic"):
        resumed.train(train, valid)
    assert "Resuming training after epoch 1" in caplog.text
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == saved["history"]
    assert resumed.epoch_file(2).is_file()
    missing, (train, valid, _) = build(tiny_dataset, exp_id="res", epoch=7, max_epoch=9)
    with pytest.raises(LibTrafficError, match=r"epoch 7: no checkpoint .*GRU_TINY_epoch7\.tar"):
        missing.train(train, valid)


def test_batches_seen_counts_optimizer_steps_and_resumes(tiny_dataset: str) -> None:
    executor, (train, valid, _) = build(tiny_dataset, exp_id="seen")
    executor.train(train, valid)
    assert len(train) > 1 and executor.batches_seen == 2 * len(train)
    assert torch.load(executor.epoch_file(1), weights_only=True)["batches_seen"] == 2 * len(train)
    resumed, (train, valid, _) = build(tiny_dataset, exp_id="seen", epoch=1, max_epoch=3)
    resumed.train(train, valid)
    assert resumed.batches_seen == 3 * len(train)


def test_train_step_hook_may_take_several_steps_per_batch(tiny_dataset: str) -> None:
    """A hook taking two optimiser steps per batch (as MTGNN's node groups): each step is counted in
    batches_seen, and the epoch's training loss is the mean over all steps."""
    executor, (train, valid, _) = build(tiny_dataset, max_epoch=1)
    seen, values = [], []

    def two_steps(batch, where):
        taken = []
        for _ in range(2):
            seen.append(executor.batches_seen)
            executor.optimizer.zero_grad()
            taken.append(executor._optimizer_step(executor._batch_loss(batch), where))
        values.extend(taken)
        return taken

    executor._train_step = two_steps
    executor.train(train, valid)
    assert seen == list(range(2 * len(train))) and executor.batches_seen == 2 * len(train)
    assert executor.history[0]["train_loss"] == pytest.approx(np.mean(values))


def test_evaluate_saves_predictions_and_metrics(tiny_dataset: str) -> None:
    executor, (train, valid, test) = build(tiny_dataset, max_epoch=1, save_mode=["csv", "json"])
    executor.train(train, valid)
    result = executor.evaluate(test)
    folder = paths.evaluate_cache_dir("ex")
    npz = np.load(next(folder.glob("*_GRU_TINY_predictions.npz")))
    num_train, num_val, num_test = get_dataset(executor.config).prepare().split
    assert npz["prediction"].shape == npz["truth"].shape == (num_test, 3, 6, 1)
    # The truth is the raw readings (zeros = missing), up to float32 scaler round-off.
    speeds = generate_speeds(6, 3, seed=1).speeds.astype(np.float64)
    starts = np.arange(num_train + num_val, num_train + num_val + num_test)
    raw = speeds[starts[:, None] + 6 + np.arange(3)][..., None]
    assert (raw == 0).sum() > 0
    np.testing.assert_allclose(npz["truth"], raw, rtol=0, atol=1e-4)
    pred = npz["prediction"].astype(np.float64)
    for h in range(3):
        t, p = raw[:, h], pred[:, h]
        assert result[f"masked_MAE@{h + 1}"] == pytest.approx(np.abs(p - t)[t != 0].mean(), rel=1e-5)
        assert result[f"masked_RMSE@{h + 1}"] == pytest.approx(np.sqrt(((p - t)[t != 0] ** 2).mean()), rel=1e-5)
        assert result[f"MAE@{h + 1}"] == pytest.approx(np.abs(p - t).mean(), rel=1e-5)
    table = pd.read_csv(next(folder.glob("*_GRU_TINY.csv")), index_col=0)
    assert list(table.index) == [1, 2, 3]
    assert table.loc[2, "masked_MAE"] == pytest.approx(result["masked_MAE@2"], rel=1e-6)
    assert len(list(folder.glob("*_GRU_TINY.json"))) == 1


def test_best_checkpoint_matches_its_epoch_file(tiny_dataset: str) -> None:
    executor, (train, valid, _) = build(tiny_dataset, lr_decay=True, lr_scheduler="steplr", step_size=1,
                                        lr_decay_ratio=0.5, max_epoch=3)
    executor.train(train, valid)
    best = executor.best_state
    saved = torch.load(executor.epoch_file(executor.best_epoch), weights_only=True)
    assert best["epoch"] == saved["epoch"] == executor.best_epoch
    assert best["scheduler_state_dict"]["last_epoch"] == saved["scheduler_state_dict"]["last_epoch"] == executor.best_epoch + 1
    assert best["optimizer_state_dict"]["param_groups"][0]["lr"] == saved["optimizer_state_dict"]["param_groups"][0]["lr"]
    for index, state in saved["optimizer_state_dict"]["state"].items():
        assert torch.equal(best["optimizer_state_dict"]["state"][index]["exp_avg"], state["exp_avg"])
    for key, value in saved["model_state_dict"].items():
        assert torch.equal(best["model_state_dict"][key], value), key


def _valid_predictions(executor, loader) -> tuple[np.ndarray, np.ndarray]:
    """(pred, true) on ``loader``, inverse-scaled, as numpy [samples, window, nodes, dim]."""
    executor.model.eval()
    preds, truths = [], []
    with torch.no_grad():
        for batch in loader:
            preds.append(executor.scaler.inverse_transform(executor.model.predict(batch)[..., :1]).numpy())
            truths.append(executor.scaler.inverse_transform(batch["y"][..., :1]).numpy())
    return np.concatenate(preds).astype(np.float64), np.concatenate(truths).astype(np.float64)


def test_best_epoch_by_a_metric_at_one_horizon(tiny_dataset: str) -> None:
    executor, (train, valid, _) = build(tiny_dataset, max_epoch=3, best_metric="masked_MAE@2", learning_rate=0.05)
    executor.train(train, valid)
    values = [h["masked_MAE@2"] for h in executor.history]
    assert executor.best_epoch == int(np.argmin(values))
    assert executor.best_value == min(values)
    assert executor.best_val_loss == executor.history[executor.best_epoch]["loss"]
    # The model holds the best epoch's weights; the value is masked MAE at horizon 2, computed here by hand.
    pred, true = _valid_predictions(executor, valid)
    t, p = true[:, 1], pred[:, 1]
    keep = np.abs(t) > 1e-4  # zero readings come back from the scaler a few 1e-6 off zero
    assert executor._validate(valid, 0)["masked_MAE@2"] == pytest.approx(np.abs(p - t)[keep].mean(), rel=1e-5)
    saved = torch.load(executor.epoch_file(executor.best_epoch), weights_only=True)
    assert saved["best_metric"] == "masked_MAE@2" and saved["best_value"] == executor.best_value


def test_metric_without_horizon_is_the_mean_over_horizons(tiny_dataset: str) -> None:
    executor, (train, valid, _) = build(tiny_dataset, max_epoch=1, best_metric="masked_RMSE")
    executor.train(train, valid)
    pred, true = _valid_predictions(executor, valid)
    per_horizon = [np.sqrt(((pred[:, h] - true[:, h])[np.abs(true[:, h]) > 1e-4] ** 2).mean()) for h in range(3)]
    assert executor.history[0]["masked_RMSE"] == pytest.approx(np.mean(per_horizon), rel=1e-5)


def test_r2_best_epoch_is_the_highest(tiny_dataset: str) -> None:
    executor, _ = build(tiny_dataset, best_metric="R2", use_early_stop=True, patience=2)
    assert executor.best_metric.mode == "max"
    executor._track_best(0, {"loss": 1.0, "R2": 0.5})
    executor._track_best(1, {"loss": 0.5, "R2": 0.3})  # a lower loss but a worse R2: not the best
    assert (executor.best_epoch, executor.best_value, executor.best_val_loss, executor.wait) == (0, 0.5, 1.0, 1)
    executor._track_best(2, {"loss": 0.9, "R2": 0.7})
    assert (executor.best_epoch, executor.best_value, executor.wait) == (2, 0.7, 0)
    executor._track_best(3, {"loss": 0.1, "R2": 0.6})
    executor._track_best(4, {"loss": 0.1, "R2": 0.6})
    assert executor.stop and executor.best_epoch == 2


@pytest.mark.parametrize("name, message", [
    ("masked_MEA", r"Unknown metric 'masked_MEA'.*Did you mean 'masked_MAE'\?.*Valid values: .*R2"),
    ("masked_MAE@4", r"horizon after @ must be a whole number from 1 to output_window \(3\)"),
    ("masked_MAE@0", r"from 1 to output_window"),
    ("loss@1", r"validation loss has no horizons"),
])
def test_unknown_best_metric(tiny_dataset: str, name: str, message: str) -> None:
    with pytest.raises(LibTrafficError, match=message):
        build(tiny_dataset, best_metric=name)


def test_resume_refuses_another_best_metric(tiny_dataset: str) -> None:
    first, (train, valid, _) = build(tiny_dataset, exp_id="resm")
    first.train(train, valid)
    resumed, (train, valid, _) = build(tiny_dataset, exp_id="resm", epoch=1, max_epoch=3, best_metric="masked_MAE")
    with pytest.raises(LibTrafficError, match=r"chose its best epoch by loss, this run by best_metric masked_MAE"):
        resumed.train(train, valid)


def test_random_states_round_trip_through_a_weights_only_file(tmp_path) -> None:
    """The checkpoint's random states survive torch.save / torch.load(weights_only=True) exactly."""
    import random

    from libtraffic.executor import checkpoint

    generator = torch.Generator().manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1), torch.rand(1, generator=generator)  # a gauss is cached
    torch.save({"rng_state": checkpoint.rng_state(generator)}, tmp_path / "rng.pt")

    def draws() -> list[float]:
        return [random.random(), random.gauss(0, 1), float(np.random.normal()), float(np.random.rand()),
                float(torch.rand(1)), float(torch.rand(1, generator=generator))]

    expected = draws()
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng_state"], generator)
    assert draws() == expected
