"""The tuning report: each figure read back and compared with the files it draws; missing files."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from libtraffic.tune.finish import write_report_safely
from libtraffic.report import PANELS, write_report
from libtraffic.report import figures
from libtraffic.report.experiment import load_experiment
from libtraffic.results import RESULTS_JSON as RESULTS_FILE, SETTINGS_FILE
from libtraffic.report.synthetic import SPACE, write_synthetic_experiment
from libtraffic.utils.errors import LibTrafficError

from tests import warm
from conftest import REPO_ROOT, SUBPROCESS_ENV


@pytest.fixture
def exp_folder(workdir: Path) -> Path:
    return workdir / "libtraffic" / "cache" / "e1"


@pytest.fixture
def records(exp_folder: Path) -> list[dict]:
    return write_synthetic_experiment(exp_folder, trials=20, max_epoch=6, nodes=7, samples=400)


def by_label(ax, label: str):
    return next(line for line in ax.lines if line.get_label() == label)


def finished(records: list[dict]) -> list[dict]:
    return sorted((r for r in records if r["status"] != "ERROR"), key=lambda r: r["best_loss"])


def test_history_is_each_trial_and_the_cumulative_min(records, exp_folder):
    ax = figures.history(load_experiment("e1")).axes[0]
    order = sorted(records, key=lambda r: r["started"])
    assert order != sorted(records, key=lambda r: r["trial_id"])  # the ids are random, as with Ray's searchers
    losses = np.array([r["best_loss"] for r in order], dtype=float)  # NaN for the failed trial
    running = by_label(ax, "running best").get_ydata()
    expected = [min([v for v in losses[: i + 1] if not math.isnan(v)], default=math.nan) for i in range(len(losses))]
    np.testing.assert_allclose(running, expected)
    assert running[-1] == min(r["best_loss"] for r in finished(records))
    for status in ("DONE", "STOPPED EARLY"):
        points = by_label(ax, f"trial ({status.lower()})")
        chosen = [(i + 1, r["best_loss"]) for i, r in enumerate(order) if r["status"] == status]
        assert list(zip(points.get_xdata(), points.get_ydata())) == chosen
    assert list(by_label(ax, "failed (no loss)").get_xdata()) == [i + 1 for i, r in enumerate(order)
                                                                  if r["status"] == "ERROR"]
    assert ax.get_xlabel() == "trial, in the order it started"


def test_learning_curves_have_each_trials_epochs(records, exp_folder):
    ax = figures.curves(load_experiment("e1")).axes[0]
    drawn = {line.get_label(): line for line in ax.lines}
    for r in records:
        if r["status"] == "ERROR":
            assert r["trial_id"] not in drawn
            continue
        line = drawn[r["trial_id"]]
        assert len(line.get_ydata()) == r["epochs_run"]
        np.testing.assert_allclose(line.get_ydata(), r["loss_curve"])
        assert list(line.get_xdata()) == list(range(r["epochs_run"]))  # epochs from 0, as the logs count them
        assert line.get_linestyle() == ("--" if r["status"] == "STOPPED EARLY" else "-")
    stopped = [r for r in records if r["status"] == "STOPPED EARLY"]
    assert stopped and all(len(drawn[r["trial_id"]].get_ydata()) < 6 for r in stopped)
    assert drawn[finished(records)[0]["trial_id"]].get_color() == figures.BEST_COLOR
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[:2] == ["done", "stopped early"] and "interrupted" not in legend  # no trial was interrupted


def test_history_ticks_are_whole_trial_numbers(records, exp_folder):
    records = records[:3]  # few trials: matplotlib would put ticks at 1.5, 2.5 ...
    (exp_folder / RESULTS_FILE).write_text(json.dumps(records))
    ax = figures.history(load_experiment("e1")).axes[0]
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_one_axes_per_parameter_value_against_loss(records, exp_folder):
    fig = figures.parameters(load_experiment("e1"))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(" ")[0] for ax in axes] == list(SPACE)
    done = finished(records)
    for ax, param in zip(axes, SPACE):
        points = ax.collections[0].get_offsets()
        np.testing.assert_allclose(points[:, 0], [r["config"][param] for r in done])
        np.testing.assert_allclose(points[:, 1], [r["best_loss"] for r in done])
        assert ax.get_xscale() == ("log" if SPACE[param]["type"] == "loguniform" else "linear")
    assert axes[0].get_title() == "learning_rate (log axis)"


def test_parallel_coordinates_scale_each_axis_and_colour_by_loss(records, exp_folder):
    ax = figures.parallel(load_experiment("e1")).axes[0]
    done = finished(records)[::-1]
    assert [line.get_label() for line in ax.lines if not line.get_label().startswith("_")] == \
        [r["trial_id"] for r in done]
    lines = [by_label(ax, r["trial_id"]) for r in done]
    lr = np.log10([r["config"]["learning_rate"] for r in done])
    np.testing.assert_allclose([line.get_ydata()[0] for line in lines], (lr - lr.min()) / (lr.max() - lr.min()))
    losses = np.array([r["best_loss"] for r in done])
    np.testing.assert_allclose([line.get_ydata()[-1] for line in lines],
                               (losses - losses.min()) / (losses.max() - losses.min()))
    best, worst = lines[-1].get_color(), lines[0].get_color()
    assert best != worst and best[1] > worst[1]  # viridis reversed: yellow (high green) for the lowest loss


def test_importance_is_fanova_shares_led_by_learning_rate(records, exp_folder):
    exp = load_experiment("e1")
    ax = figures.importances(exp).axes[0]
    widths = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches)}
    assert set(widths) == set(SPACE)
    assert sum(widths.values()) == pytest.approx(1.0)
    assert max(widths, key=widths.get) == "learning_rate"  # the synthetic loss depends mostly on it
    assert figures.importances(exp).axes[0].patches[-1].get_width() == widths["learning_rate"]  # seeded


def test_metrics_per_horizon_against_minutes_ahead(records, exp_folder):
    fig = figures.horizon_metrics(load_experiment("e1"))
    left, right = fig.axes
    minutes = np.arange(1, 13) * 5.0
    mae, rmse = by_label(left, "masked_MAE"), by_label(left, "masked_RMSE")
    np.testing.assert_allclose(mae.get_xdata(), minutes)
    # synthetic table: metric k at horizon h is h * (0.5 + 0.1 k); masked_MAE is k=4, masked_RMSE k=7
    np.testing.assert_allclose(mae.get_ydata(), np.arange(1, 13) * 0.9)
    np.testing.assert_allclose(rmse.get_ydata(), np.arange(1, 13) * 1.2)
    np.testing.assert_allclose(right.lines[0].get_ydata(), np.arange(1, 13) * 1.0)  # masked_MAPE in %


def test_predictions_over_a_day_for_low_median_high_error_sensors(records, exp_folder):
    exp = load_experiment("e1")
    exp.predictions.truth[5, 0, 0, 0] = 0.0  # a missing reading: a gap, left out of the sensor's error
    errors = np.abs(exp.predictions.prediction[:288, 0, :, 0] - exp.predictions.truth[:288, 0, :, 0])
    errors = np.array([np.delete(errors[:, k], 5).mean() if k == 0 else errors[:, k].mean() for k in range(7)])
    axes = figures.predictions(exp).axes
    # synthetic noise grows with the sensor index: lowest, median and highest error are 0, 3, 6
    assert [ax.get_title().split(" ")[2] for ax in axes] == ["0", "3", "6"]
    assert axes[0].get_title() == f"sensor index 0 (1-step MAE {errors[0]:.3g})"
    pred, truth = exp.predictions.prediction, exp.predictions.truth
    for ax, node in zip(axes, (0, 3, 6)):
        np.testing.assert_allclose(by_label(ax, "true").get_ydata(), np.where(truth == 0, np.nan, truth)[:288, 0, node, 0])
        np.testing.assert_allclose(by_label(ax, "predicted 5 min ahead").get_ydata(), pred[:288, 0, node, 0])
        late = by_label(ax, "predicted 60 min ahead").get_ydata()
        assert np.isnan(late[:11]).all()
        np.testing.assert_allclose(late[11:], pred[:277, 11, node, 0])  # sample s predicts step s + 11
    np.testing.assert_allclose(by_label(axes[0], "true").get_xdata()[-1], 287 * 300 / 3600)

    # With the dataset at hand, sensors are named by their .geo ids (the predictions' node order).
    geo = exp_folder.parents[2] / "raw_data" / "SYNTH" / "SYNTH.geo"
    geo.parent.mkdir(parents=True)
    nodes = exp.predictions.truth.shape[2]
    geo.write_text("geo_id,type,coordinates\n" + "".join(f'{7700 + k},Point,"[0, 0]"\n' for k in range(nodes)))
    axes = figures.predictions(load_experiment("e1")).axes
    assert [ax.get_title().split(" (")[0] for ax in axes] == ["sensor 7700", "sensor 7703", "sensor 7706"]


def decoded_images(page: str) -> list[np.ndarray]:
    return [mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
            for data in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_embeds_every_panel_and_writes_the_pngs(records, exp_folder):
    path = write_report("e1")
    page = path.read_text()
    assert path == exp_folder / "hyper_tune_report.html"
    for panel in PANELS.values():
        if panel.draw is not None:
            assert f"<h2>{panel.title}</h2>" in page
    images = decoded_images(page)
    assert len(images) == 7 and all(img.std() > 0.01 for img in images)
    assert sorted(p.stem for p in (exp_folder / "hyper_tune_report").glob("*.png")) == sorted(
        k for k, p in PANELS.items() if p.draw is not None)
    assert "http" not in page.replace("python", "")  # nothing fetched from the network
    assert "FanovaImportanceEvaluator" in page and "OptunaSearch" in page
    assert "<h2>Best configurations retrained with fresh seeds</h2>" not in page and "final" not in page.lower()


def test_few_trials_skip_panels_with_notes(workdir, exp_folder):
    write_synthetic_experiment(exp_folder, trials=3, max_epoch=3)
    page = write_report("e1").read_text()
    assert "Importance needs at least 5 finished trials; this experiment has 3." in page
    assert "<section id='parallel'>" in page  # three trials, four parameters: parallel coordinates are drawn
    assert not (exp_folder / "hyper_tune_report" / "importance.png").exists()
    results = json.loads((exp_folder / RESULTS_FILE).read_text())
    for r in results:
        r["config"] = {"learning_rate": r["config"]["learning_rate"]}
    (exp_folder / RESULTS_FILE).write_text(json.dumps(results))
    (exp_folder / SETTINGS_FILE).unlink()
    page = write_report("e1").read_text()
    assert "Parallel coordinates need at least two tuned parameters" in page
    assert "Settings file missing" in page and "command</th><td>unknown" in page
    assert "learning_rate (log axis)" not in page  # no space file: no log-axis claim
    assert not (exp_folder / "hyper_tune_report" / "parallel.png").exists()  # a stale figure is removed


def test_one_trial_shows_its_curve_and_metrics_and_notes_the_rest(workdir, exp_folder):
    records = write_synthetic_experiment(exp_folder, trials=1)
    page = write_report("e1").read_text()
    assert records[0]["status"] == "DONE"
    for note in ("Fewer than two trials reported a validation loss", "Every finished trial used the same values",
                 "Parallel coordinates need at least two tuned parameters and two finished trials",
                 "Importance needs at least two tuned parameters"):
        assert note in page
    assert sorted(p.stem for p in (exp_folder / "hyper_tune_report").glob("*.png")) == [
        "curves", "predictions", "test_metrics"]
    assert len(decoded_images(page)) == 3


def test_interrupted_experiment_draws_what_exists(workdir, exp_folder):
    write_synthetic_experiment(exp_folder, trials=6)
    for path in [*exp_folder.glob("*_best_config.json"), *(exp_folder / "evaluate_cache").iterdir()]:
        path.unlink()
    page = write_report("e1").read_text()
    assert "best-config file is missing" in page and "No test metrics in" in page
    assert "No predictions file" in page
    assert len(decoded_images(page)) == 5  # history, curves, parameters, parallel, importance


def test_final_seeds_block_is_mean_and_std_per_horizon(records, exp_folder):
    runs = [{"seed": s, "test": {f"masked_{m}@{h}": h + s * 0.1 for m in ("MAE", "MAPE", "RMSE") for h in (1, 2)}}
            for s in (1, 2, 3)]
    (exp_folder / RESULTS_FILE).write_text(json.dumps({"trials": records, "final_seeds": [
        {"trial_id": records[0]["trial_id"], "config": {"hidden_size": 32}, "runs": runs}]}))
    page = write_report("e1").read_text()
    assert "<h2>Best configurations retrained with fresh seeds</h2>" in page
    values = np.array([1.1, 1.2, 1.3])
    assert f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" in page and "seeds 1, 2, 3" in page


def test_missing_experiment_is_a_user_error(workdir):
    with pytest.raises(LibTrafficError, match="No experiment folder .*check --exp_id"):
        write_report("nope")
    out = warm.run([sys.executable, "-m", "libtraffic.report", "--exp_id", "nope"], cwd=workdir,
                         env={**SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "Error: No experiment folder" in out.stderr and "Traceback" not in out.stderr


def test_a_failing_report_does_not_fail_the_tuning_run(workdir, exp_folder, capsys):
    import logging

    exp_folder.mkdir(parents=True)
    (exp_folder / RESULTS_FILE).write_text("[{broken")
    write_report_safely("e1", logging.getLogger("test"))
    out = capsys.readouterr().out
    assert "The tuning report could not be written" in out and "python -m libtraffic.report --exp_id e1" in out
    assert (exp_folder / RESULTS_FILE).read_text() == "[{broken"  # nothing the run wrote is touched


def test_importance_takes_every_space_type_with_values_ray_samples(workdir, exp_folder):
    """Each space-file type becomes an Optuna distribution that holds the values Ray draws from it."""

    from libtraffic.tune.spaces import SPACE_TYPES
    from libtraffic.report.importance import DISTRIBUTIONS, distribution, importance

    entries = {"a": {"type": "uniform", "lower": 0.1, "upper": 0.5}, "b": {"type": "loguniform", "lower": 1e-4, "upper": 1e-1},
               "c": {"type": "quniform", "lower": 0.1, "upper": 0.5, "q": 0.1}, "d": {"type": "randn", "mean": 0, "sd": 1},
               "e": {"type": "randint", "lower": 1, "upper": 4}, "f": {"type": "qrandint", "lower": 2, "upper": 8, "q": 2},
               "g": {"type": "lograndint", "lower": 1, "upper": 64}, "h": {"type": "choice", "list": ["x", [1, 2], 3]},
               "i": {"type": "grid_search", "list": [True, False]}}
    assert set(DISTRIBUTIONS) == set(SPACE_TYPES) == {e["type"] for e in entries.values()}
    rng = np.random.default_rng(0)
    domains = {k: SPACE_TYPES[e["type"]].ray(e) for k, e in entries.items()}
    records = []
    for i in range(12):
        config = {k: (e["list"][i % len(e["list"])] if e["type"] == "grid_search" else domains[k].sample(random_state=rng))
                  for k, e in entries.items()}
        config = {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}
        records.append({"trial_id": f"t{i:02d}", "config": config, "status": "DONE", "best_loss": 1.0 + config["a"],
                        "loss_curve": [1.0 + config["a"]], "epochs_run": 1, "metric": "loss",
                        "best_value": 1.0 + config["a"], "metric_curve": [1.0 + config["a"]]})
    exp_folder.mkdir(parents=True)
    (exp_folder / RESULTS_FILE).write_text(json.dumps(records))
    (exp_folder / SETTINGS_FILE).write_text(json.dumps({"space": entries}))
    exp = load_experiment("e1")
    assert distribution(exp, "b").log and distribution(exp, "g").log and not distribution(exp, "a").log
    scores = importance(exp)  # Optuna's create_trial refuses a value outside its distribution
    assert set(scores) == set(entries) and max(scores, key=scores.get) == "a"  # the loss is 1 + a


def test_panels_use_the_ranking_metric_when_the_records_name_one(records, exp_folder):
    """Records of a --metric R2 run: ranked and drawn by best_value (higher is better), labelled with the name."""
    rng = np.random.default_rng(5)
    for r in records:
        r.update(metric="R2", metric_mode="max", metric_curve=[float(v) for v in rng.uniform(0, 1, len(r["loss_curve"]))])
        r["best_value"] = max(r["metric_curve"]) if r["metric_curve"] else math.nan
    (exp_folder / RESULTS_FILE).write_text(json.dumps(records))
    exp = load_experiment("e1")
    done = [r for r in records if r["status"] != "ERROR"]
    assert exp.best["trial_id"] == max(done, key=lambda r: r["best_value"])["trial_id"]
    ax = figures.history(exp).axes[0]
    assert ax.get_ylabel() == "best validation R2"
    order = sorted(records, key=lambda r: r["started"])
    values = [r["best_value"] for r in order]
    expected = [max([v for v in values[: i + 1] if not math.isnan(v)], default=math.nan) for i in range(len(values))]
    np.testing.assert_allclose(by_label(ax, "running best").get_ydata(), expected)
    ax = figures.curves(exp).axes[0]
    assert ax.get_ylabel() == "validation R2"
    drawn = {line.get_label(): line for line in ax.lines}
    for r in done:
        assert list(drawn[r["trial_id"]].get_ydata()) == r["metric_curve"]
    assert "best validation R2" in write_report("e1").read_text()
