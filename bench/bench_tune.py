"""Tuning benchmark: hyper_tune.py on the METR_LA-sized dataset, --max_concurrent 1 vs 2.

    python bench/bench_tune.py [--num_days 119] [--num_samples 4] [--repeats 2] [--keep] [--echo]
                               [--worker_niceness N]

Runs `python ../hyper_tune.py ... --space_file tune_space` as fresh subprocesses with bench/ as the
working directory (so raw_data/ and libtraffic/cache/ resolve under bench/), a new --exp_id each run,
--cpu_per_trial 1 and --seed 0, so the --max_concurrent 1 and 2 runs train the same configurations.
The space is the tutorial's sample_space_file.json with max_epoch fixed to 1 epoch and hidden_size
limited to [50, 100] (500 would make one trial take many minutes on one core); it is written to
bench/tune_space.json and printed. --num_days 119 uses bench/raw_data/METR_LA_BENCH (make it with
bench/make_data.py); other values write a smaller METR_LA_BENCH_<days>D once (quick smoke runs:
`--num_days 7 --num_samples 2 --repeats 1`, about two minutes; they leave RESULTS.md alone). Runs use
a private RAY_TMPDIR (so they never join a `ray start` cluster of someone else on the machine) and
are retried once if they fail (a `ray stop` elsewhere kills every Ray process on the machine).

Measured per run, from the child's timestamped output, its results JSON and a poller:
- phases: start-up (interpreter, imports, config, cached data) until the driver logs the prepared
  data; Ray start-up (ray.init + Tuner set-up) until Tune's first status table (its "running for"
  age gives the exact start of Tuner.fit); the tuning loop = fit_seconds minus Ray start-up;
  finish (best model, test evaluation, result files) after the trial table.
- overhead per trial = (tuning loop - sum of epoch_seconds) / trials, split into the part inside
  the trainable (wall_time_s - epoch_seconds: data views, model build, checkpoints) and outside it
  (worker/actor start, scheduling, result handling, ray.shutdown).
- peak PSS (psutil memory_full_info().pss, so shared pages such as Ray's object store count once)
  summed over hyper_tune.py and all its descendants (GCS, raylet, Ray workers), polled every 0.5 s
  by a thread at nice 19 (a process's PSS is re-read when its RSS moved 4 MiB, else every 2 s: the
  read walks its page tables); the peak during the tuning loop is the figure compared (the finish
  phase runs after Ray stopped).
- throughput = trials per minute of tuning loop (each trial is one epoch).
- other load = CPU used by processes outside the benchmark, in cores, averaged over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import psutil

from benchlib import BENCH_DIR, DATASET, GIB, MODEL, NUM_DAYS, NUM_NODES, SEED, TASK, median, require_dataset, table, \
    write_section

REPO_DIR = BENCH_DIR.parent
SPACE_NAME = "tune_space"
SPACE_FILE = BENCH_DIR / f"{SPACE_NAME}.json"
# The tutorial's space with a small, fixed run length: one epoch per trial, and hidden sizes that keep
# an epoch under a minute or two on one core.
SPACE_CHANGES = {"max_epoch": {"type": "choice", "list": [1]}, "hidden_size": {"type": "choice", "list": [50, 100]}}
RAY_TMPDIR = Path("/tmp/bench_tune")  # short: Ray's socket paths live under it
OUT_DIR = BENCH_DIR / "libtraffic" / "bench_tune"  # child outputs (git-ignored)
DEFAULT_SAMPLES = 4
TARGET_OVERHEAD_S, TARGET_MEMORY_RATIO, TARGET_THROUGHPUT_RATIO = 3.0, 1.3, 1.6
POLL_S, POLL_NICE = 0.5, 19  # 2 Hz; the poller yields even to Ray's workers (nice 15)
PSS_REREAD_RSS, PSS_REREAD_S = 4 * 2**20, 2.0  # PSS is re-read when RSS moved 4 MiB, else every 2 s
PREPARED_LINE = "Prepared data once in the driver"
STATUS_AGE = re.compile(r"\(running for (\d+):(\d+):([\d.]+)\)")
FIT_LINE = re.compile(r"(\d+) trials in ([\d.]+) s of tuning")
TRIALS_LINE = "All trials, best first"


class RunFailed(Exception):
    """hyper_tune.py exited with an error (e.g. another user's `ray stop` killed its Ray processes)."""


@dataclass
class Run:
    concurrency: int
    exp_id: str
    command: list[str]
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    stage: str = "start-up"  # then "tuning" (driver has the data), then "finish" (trial table printed)
    wall_s: float = 0.0
    returncode: int = 0
    samples: list[tuple[float, int, str]] = field(default_factory=list)  # (t, summed PSS, phase)
    peak_parts: dict[str, list[int]] = field(default_factory=dict)  # [PSS, count] by kind at the tuning peak
    peak_procs: int = 0
    cpu_parts: dict[str, float] = field(default_factory=dict)  # CPU seconds over the run by process kind
    poll_s: list[float] = field(default_factory=list)
    other_cores: float = 0.0
    bench_cores: float = 0.0  # CPU of this script (poller, output reader)
    load: tuple[float, float] = (0.0, 0.0)
    trials: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


# ----- data set and space -----
def dataset_name(num_days: int) -> str:
    """METR_LA_BENCH for the full size (made by make_data.py); a smaller copy is written on demand."""
    if num_days == NUM_DAYS:
        require_dataset()
        return DATASET
    name = f"{DATASET}_{num_days}D"
    if not (BENCH_DIR / "raw_data" / name / f"{name}.dyna").is_file():
        from libtraffic.data.synthetic import write_synthetic_dataset

        write_synthetic_dataset(BENCH_DIR / "raw_data", name, NUM_NODES, num_days, SEED)
    return name


def write_space() -> dict:
    space = json.loads((REPO_DIR / "sample_space_file.json").read_text()) | SPACE_CHANGES
    SPACE_FILE.write_text(json.dumps(space, indent=2) + "\n")
    return space


def tune_command(dataset: str, num_samples: int, concurrency: int, exp_id: str) -> list[str]:
    return ["../hyper_tune.py", "--task", TASK, "--model", MODEL, "--dataset", dataset, "--space_file", SPACE_NAME,
            "--num_samples", str(num_samples), "--cpu_per_trial", "1", "--max_concurrent", str(concurrency),
            "--seed", "0", "--exp_id", exp_id]


# ----- running and polling -----
def kind(proc: psutil.Process, driver: int) -> str:
    """A short label for a process of the tree (driver, gcs_server, raylet, ray::<task>, ...)."""
    if proc.pid == driver:
        return "driver"
    args = proc.cmdline()
    if args and args[0].startswith("ray::"):
        return args[0].split()[0]
    script = next((Path(a).name for a in args[1:] if a.endswith(".py")), None)
    return script or (Path(args[0]).name if args else proc.name())


@dataclass
class Seen:
    """What the poller knows of one process: its label, last PSS reading, and CPU seconds."""

    label: str = ""
    rss: int = -1
    pss: int = 0
    read_at: float = 0.0
    cpu_s: float = 0.0


def pss_of(proc: psutil.Process, seen: Seen) -> int:
    """PSS, re-read (a page-table walk, ~10 ms for a torch process) only when RSS moved or it is stale."""
    rss, now = proc.memory_info().rss, time.perf_counter()
    if abs(rss - seen.rss) >= PSS_REREAD_RSS or now - seen.read_at >= PSS_REREAD_S:
        seen.rss, seen.pss, seen.read_at = rss, proc.memory_full_info().pss, now
    return seen.pss


def sample_tree(root: psutil.Process, seen: dict[int, Seen]) -> tuple[int, dict[str, list[int]], int]:
    """Summed PSS of root and its descendants, [PSS, count] per kind, process count; updates ``seen``."""
    total, parts, count = 0, {}, 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            with proc.oneshot():
                entry = seen.setdefault(proc.pid, Seen())
                entry.label = kind(proc, root.pid)  # Ray workers retitle themselves once started
                pss = pss_of(proc, entry)
                times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        entry.cpu_s = times.user + times.system
        total, count = total + pss, count + 1
        parts.setdefault(entry.label, [0, 0])
        parts[entry.label][0] += pss
        parts[entry.label][1] += 1
    return total, parts, count


def busy_cpu() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def read_output(proc: subprocess.Popen, run: Run, start: float, echo: bool) -> None:
    """Timestamp every output line and follow the phase markers."""
    for line in proc.stdout:
        run.lines.append((time.perf_counter() - start, line.rstrip("\n")))
        if PREPARED_LINE in line and run.stage == "start-up":
            run.stage = "tuning"
        elif TRIALS_LINE in line:
            run.stage = "finish"
        if echo:
            print(f"    | {line}", end="", flush=True)


def poll(proc: subprocess.Popen, run: Run, start: float, seen: dict[int, Seen]) -> None:
    """Sample the tree's PSS every POLL_S until the process exits, at a lower priority than the trials."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), POLL_NICE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        t0 = time.perf_counter()
        try:
            total, parts, count = sample_tree(root, seen)
        except psutil.NoSuchProcess:
            break
        run.poll_s.append(time.perf_counter() - t0)
        stage = run.stage
        run.samples.append((t0 - start, total, stage))
        if stage == "tuning" and total > peak:
            peak, run.peak_parts, run.peak_procs = total, parts, count
        time.sleep(max(0.0, POLL_S - (time.perf_counter() - t0)))


def execute(run: Run, echo: bool, worker_nice: int | None) -> None:
    """Run hyper_tune.py, polling the PSS of its process tree until it exits."""
    # A private Ray temp dir: ray.init() would otherwise join a cluster another user started with
    # `ray start` (it reads /tmp/ray/ray_current_cluster) instead of starting its own.
    RAY_TMPDIR.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1",
                                                                       "RAY_TMPDIR": str(RAY_TMPDIR)}
    if worker_nice is not None:  # Ray starts its workers at nice 15 unless told otherwise
        env["RAY_worker_niceness"] = str(worker_nice)
    seen: dict[int, Seen] = {}
    busy0, self0, load0 = busy_cpu(), sum(os.times()[:2]), os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *run.command], cwd=BENCH_DIR, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threads = [threading.Thread(target=read_output, args=(proc, run, start, echo), daemon=True),
               threading.Thread(target=poll, args=(proc, run, start, seen), daemon=True)]
    for thread in threads:
        thread.start()
    run.returncode = proc.wait()
    run.wall_s = time.perf_counter() - start
    for thread in threads:
        thread.join()
    own = sum(os.times()[:2]) - self0
    run.bench_cores = own / run.wall_s
    run.other_cores = max(0.0, (busy_cpu() - busy0 - sum(e.cpu_s for e in seen.values()) - own) / run.wall_s)
    for entry in seen.values():
        run.cpu_parts[entry.label] = run.cpu_parts.get(entry.label, 0.0) + entry.cpu_s
    run.load = (load0, os.getloadavg()[0])


# ----- reading a finished run -----
def first_time(run: Run, needle: str) -> float | None:
    return next((t for t, line in run.lines if needle in line), None)


def fit_start(run: Run) -> float | None:
    """Seconds since launch at which Tuner.fit started: the first status table minus its age."""
    for t, line in run.lines:
        match = STATUS_AGE.search(line)
        if match:
            h, m, s = match.groups()
            return t - (int(h) * 3600 + int(m) * 60 + float(s))
    return None


def analyse(run: Run) -> None:
    text = "\n".join(line for _, line in run.lines)
    fit = FIT_LINE.search(text)
    if run.returncode != 0 or fit is None:
        tail = "\n".join(line for _, line in run.lines[-40:])
        raise RunFailed(f"hyper_tune.py failed (exit {run.returncode}): {' '.join(run.command)}\n{tail}")
    results = BENCH_DIR / "libtraffic" / "cache" / run.exp_id / "hyper_tune_results.json"
    run.trials = json.loads(results.read_text())
    n, fit_s = len(run.trials), float(fit.group(2))
    prepared, started, done = first_time(run, PREPARED_LINE), fit_start(run), first_time(run, TRIALS_LINE)
    ray_start = started - prepared
    loop = fit_s - ray_start
    epochs = sum(sum(t["epoch_seconds"]) for t in run.trials)
    inside = sum(t["wall_time_s"] - sum(t["epoch_seconds"]) for t in run.trials)
    tuning = [pss for _, pss, stage in run.samples if stage == "tuning"]
    run.metrics = {
        "trials": n, "epochs": sum(len(t["epoch_seconds"]) for t in run.trials), "epoch_s": epochs,
        "startup_s": prepared, "ray_start_s": ray_start, "fit_s": fit_s, "loop_s": loop,
        "finish_s": run.wall_s - done, "wall_s": run.wall_s,
        "overhead_s": (run.concurrency * loop - epochs) / n, "overhead_all_s": (run.concurrency * fit_s - epochs) / n,
        "inside_s": inside / n, "outside_s": (run.concurrency * loop - epochs - inside) / n,
        "trials_per_min": 60 * n / loop, "trials_per_min_all": 60 * n / fit_s,
        "peak_tuning": max(tuning), "peak_all": max(pss for _, pss, _ in run.samples),
        "procs": run.peak_procs, "other_cores": run.other_cores, "bench_cores": run.bench_cores,
        "poll_ms": 1000 * median(run.poll_s),
    }


def by_index(trials: list[dict]) -> dict[int, dict]:
    """Trials keyed by creation index (the trial id's numeric suffix), the same for the same seed."""
    return {int(t["trial_id"].rsplit("_", 1)[-1]): t for t in trials}


def ideal_speedup(trials: list[dict], outside_s: float, workers: int) -> float:
    """Speed-up of `workers` parallel slots over one for these trial lengths, started in index order."""
    lengths = [t["wall_time_s"] + outside_s for _, t in sorted(by_index(trials).items())]
    free = [0.0] * workers
    for length in lengths:
        free[free.index(min(free))] += length
    return sum(lengths) / max(free)


# ----- report -----
def gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def run_rows(runs: list[Run]) -> str:
    header = ["conc", "exp_id", "trials", "epochs s", "start-up s", "Ray start s", "loop s", "finish s",
              "overhead/trial s (in+out)", "trials/min", "peak PSS GiB (tuning/run)", "procs", "other load",
              "load avg (start/end)"]
    rows = []
    for run in runs:
        m = run.metrics
        rows.append([run.concurrency, run.exp_id, m["trials"], f"{m['epoch_s']:.1f}", f"{m['startup_s']:.1f}",
                     f"{m['ray_start_s']:.1f}", f"{m['loop_s']:.1f}", f"{m['finish_s']:.1f}",
                     f"{m['overhead_s']:.2f} ({m['inside_s']:.2f}+{m['outside_s']:.2f})", f"{m['trials_per_min']:.2f}",
                     f"{gib(m['peak_tuning'])}/{gib(m['peak_all'])}", m["procs"], f"{m['other_cores']:.2f} cores",
                     f"{run.load[0]:.1f}/{run.load[1]:.1f}"])
    return table(header, rows)


def med(runs: list[Run], key: str) -> float:
    return median([r.metrics[key] for r in runs])


def summary(one: list[Run], two: list[Run]) -> str:
    """Medians per concurrency, ratios and targets."""
    over, over_all = med(one, "overhead_s"), med(one, "overhead_all_s")
    mem1, mem2 = med(one, "peak_tuning"), med(two, "peak_tuning")
    tp1, tp2 = med(one, "trials_per_min"), med(two, "trials_per_min")
    tpa1, tpa2 = med(one, "trials_per_min_all"), med(two, "trials_per_min_all")
    ideal = median([ideal_speedup(r.trials, r.metrics["outside_s"], 2) for r in one])
    ok = lambda flag: "yes" if flag else "NO"
    rows = [
        ["overhead per trial, tuning loop (s)", f"{over:.2f}", f"{med(two, 'overhead_s'):.2f} (slot)", "-",
         f"< {TARGET_OVERHEAD_S:g} s at conc 1", ok(over < TARGET_OVERHEAD_S)],
        ["  of it inside the trainable / outside (s)", f"{med(one, 'inside_s'):.2f} / {med(one, 'outside_s'):.2f}",
         f"{med(two, 'inside_s'):.2f} / {med(two, 'outside_s'):.2f}", "-", "-", "-"],
        ["overhead per trial incl. Ray start-up (s)", f"{over_all:.2f}", f"{med(two, 'overhead_all_s'):.2f} (slot)",
         "-", f"(< {TARGET_OVERHEAD_S:g} s)", ok(over_all < TARGET_OVERHEAD_S)],
        ["Ray start-up: ray.init + Tuner (s)", f"{med(one, 'ray_start_s'):.1f}", f"{med(two, 'ray_start_s'):.1f}",
         "-", "-", "-"],
        ["start-up before Ray: imports + data (s)", f"{med(one, 'startup_s'):.1f}", f"{med(two, 'startup_s'):.1f}",
         "-", "-", "-"],
        ["finish: best model + test evaluation (s)", f"{med(one, 'finish_s'):.1f}", f"{med(two, 'finish_s'):.1f}",
         "-", "-", "-"],
        ["peak PSS while tuning (GiB)", gib(mem1), gib(mem2), f"{mem2 / mem1:.2f}x",
         f"< {TARGET_MEMORY_RATIO:g}x", ok(mem2 / mem1 < TARGET_MEMORY_RATIO)],
        ["peak PSS whole run (GiB)", gib(med(one, "peak_all")), gib(med(two, "peak_all")),
         f"{med(two, 'peak_all') / med(one, 'peak_all'):.2f}x", "-", "-"],
        ["throughput, tuning loop (trials/min)", f"{tp1:.2f}", f"{tp2:.2f}", f"{tp2 / tp1:.2f}x",
         f">= {TARGET_THROUGHPUT_RATIO:g}x", ok(tp2 / tp1 >= TARGET_THROUGHPUT_RATIO)],
        ["throughput incl. Ray start-up (trials/min)", f"{tpa1:.2f}", f"{tpa2:.2f}", f"{tpa2 / tpa1:.2f}x",
         f"(>= {TARGET_THROUGHPUT_RATIO:g}x)", ok(tpa2 / tpa1 >= TARGET_THROUGHPUT_RATIO)],
        ["best possible 2-slot speed-up, these trial lengths", "-", "-", f"{ideal:.2f}x", "-", "-"],
        ["training time, sum of epochs (s)", f"{med(one, 'epoch_s'):.1f}", f"{med(two, 'epoch_s'):.1f}",
         f"{med(two, 'epoch_s') / med(one, 'epoch_s'):.2f}x", "-", "-"],
        ["other load on the machine (cores)", f"{med(one, 'other_cores'):.2f}", f"{med(two, 'other_cores'):.2f}",
         "-", "-", "-"],
    ]
    return table(["metric (median of runs)", "conc 1", "conc 2", "2 vs 1", "target", "met"], rows)


def trial_rows(one: list[Run], two: list[Run]) -> str:
    """Per trial (first run of each): sampled values, epoch and trainable seconds at conc 1 and 2."""
    a, b = by_index(one[0].trials), by_index(two[0].trials)
    rows = []
    for i, t in sorted(a.items()):
        u = b.get(i, {})
        same = "yes" if u.get("config") == t["config"] else "NO"
        rows.append([i, t["config"]["hidden_size"], t["config"]["learning_rate"], f"{t['config']['dropout']:.3f}", same,
                     f"{sum(t['epoch_seconds']):.1f}", f"{t['wall_time_s']:.1f}",
                     f"{sum(u.get('epoch_seconds', [])):.1f}", f"{u.get('wall_time_s', 0.0):.1f}"])
    return table(["trial", "hidden_size", "learning_rate", "dropout", "same config at conc 2", "epoch s (1)",
                  "trainable s (1)", "epoch s (2)", "trainable s (2)"], rows)


def cpu_parts(run: Run) -> str:
    parts = sorted(run.cpu_parts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in parts if seconds >= 0.05)


def peak_parts(run: Run) -> str:
    parts = sorted(run.peak_parts.items(), key=lambda kv: -kv[1][0])
    return ", ".join(f"{name}{f' x{n}' if n > 1 else ''} {pss / 2**20:.0f}" for name, (pss, n) in parts)


def report(runs: list[Run], space: dict, dataset: str, num_samples: int, worker_nice: int | None) -> str:
    one = [r for r in runs if r.concurrency == 1]
    two = [r for r in runs if r.concurrency == 2]
    days = "119 days = 34272 steps, METR_LA's size" if dataset == DATASET else f"{dataset}, a smaller smoke-test copy"
    commands = "\n".join(f"    cd bench && python {' '.join(tune_command(dataset, num_samples, c, '<new exp_id>'))}"
                         for c in (1, 2))
    nice = ("Ray's default nice 15 for its workers (trials yield to any nice-0 process on the machine)"
            if worker_nice is None else f"RAY_worker_niceness={worker_nice} (Ray's default is 15)")
    peaks = "\n".join(f"- conc {r.concurrency} ({r.exp_id}): {peak_parts(r)}" for r in (one[0], two[0]))
    cpus = "\n".join(f"- conc {r.concurrency} ({r.exp_id}, {r.wall_s:.0f} s): {cpu_parts(r)}" for r in (one[0], two[0]))
    return f"""GRU on {dataset} ({NUM_NODES} sensors, {days}), Ray {version("ray")}; {len(one)} run(s) per
concurrency, alternating 1 and 2 so both see the same machine load; {nice}. Each run is a fresh process:

{commands}

with bench/tune_space.json = the tutorial's sample_space_file.json with max_epoch fixed to 1 and hidden_size
limited to [50, 100] (500 would make one trial take many minutes on one core):
`{json.dumps(space)}`. The same --seed gives the same sampled configurations at both concurrencies.

Phases are read from the child's timestamped output: start-up until the driver logs the prepared
data; Ray start-up (ray.init + Tuner set-up) until Tune's first status table (minus its 'running for'
age); the tuning loop = fit_seconds minus Ray start-up; finish after the trial table. Overhead per
trial = (slots x tuning loop - sum of epoch_seconds) / trials, slots = --max_concurrent: 'in' is spent
inside the trainable but outside epochs (wall_time_s - epoch_seconds: data views, model build,
checkpoints), 'out' outside it (worker start, scheduling, idle slots, ray.shutdown). Peak PSS: summed
memory_full_info().pss of hyper_tune.py and all its descendants (GCS, raylet, Ray workers); shared
pages (Ray's object store, mapped libraries) count once. Polled every {POLL_S:g} s by a thread at nice
{POLL_NICE}; a process's PSS is re-read when its RSS moved {PSS_REREAD_RSS >> 20} MiB, else every {PSS_REREAD_S:g} s
(median poll {med(runs, 'poll_ms'):.0f} ms; this script used {med(runs, 'bench_cores'):.2f} cores). Throughput: trials
(= epochs) per minute of tuning loop; 'best possible' is the speed-up two slots would give for the conc-1 trial lengths
started in order (the last trial leaves one slot idle). Other load: CPU used by processes outside
the benchmark during the run, in cores.

{summary(one, two)}

Per run:

{run_rows(runs)}

Per trial (first run at each concurrency):

{trial_rows(one, two)}

PSS (MiB) by process at the tuning peak:
{peaks}

CPU seconds by process over the whole run:
{cpus}
"""


def measure(exp_id: str, concurrency: int, dataset: str, args: argparse.Namespace) -> Run:
    """One hyper_tune.py run, retried once if it fails (this machine is shared)."""
    for attempt in ("", "_retry"):
        run = Run(concurrency, exp_id + attempt, tune_command(dataset, args.num_samples, concurrency, exp_id + attempt))
        print(f"[{time.strftime('%H:%M:%S')}] cd bench && python {' '.join(run.command)}", flush=True)
        execute(run, args.echo, args.worker_niceness)
        (OUT_DIR / f"{run.exp_id}.out").write_text("".join(f"{t:8.2f} {line}\n" for t, line in run.lines))
        try:
            analyse(run)
        except RunFailed as err:
            print(err, file=sys.stderr)
            continue
        finally:
            if not args.keep:
                for folder in (Path("libtraffic/cache") / run.exp_id, Path("libtraffic/cache/hyper_tune") / run.exp_id):
                    shutil.rmtree(BENCH_DIR / folder, ignore_errors=True)
        m = run.metrics
        print(f"    {m['trials']} trials, {m['wall_s']:.0f} s: loop {m['loop_s']:.1f} s, epochs {m['epoch_s']:.1f} s, "
              f"overhead {m['overhead_s']:.2f} s/trial, peak PSS {gib(m['peak_tuning'])} GiB, "
              f"other load {m['other_cores']:.2f} cores", flush=True)
        return run
    sys.exit(f"{exp_id} failed twice; see {OUT_DIR}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_days", type=int, default=NUM_DAYS, help=f"days of data (default {NUM_DAYS}, METR_LA)")
    parser.add_argument("--num_samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"trials per run (default {DEFAULT_SAMPLES})")
    parser.add_argument("--repeats", type=int, default=2, help="runs per concurrency (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' experiment folders")
    parser.add_argument("--echo", action="store_true", help="show hyper_tune.py's output")
    parser.add_argument("--worker_niceness", type=int, default=None,
                        help="set RAY_worker_niceness for the runs (default: Ray's own, 15)")
    args = parser.parse_args()
    dataset = dataset_name(args.num_days)
    space = write_space()
    print(f"Search space {SPACE_FILE}:\n{json.dumps(space, indent=2)}")
    print(f"Load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp, runs = time.strftime("%Y%m%d_%H%M%S"), []
    for repeat in range(args.repeats):
        for concurrency in (1, 2):
            runs.append(measure(f"bench_tune_{stamp}_c{concurrency}_r{repeat}", concurrency, dataset, args))
    body = report(runs, space, dataset, args.num_samples, args.worker_niceness)
    print(body)
    if dataset != DATASET:
        print("A smaller data set: RESULTS.md is left as it is.")
        return
    # One section per trial count, so a longer run can stand next to the default one.
    default = args.num_samples == DEFAULT_SAMPLES and args.worker_niceness is None
    nice = "" if args.worker_niceness is None else f"_nice{args.worker_niceness}"
    name = "bench_tune" if default else f"bench_tune_{args.num_samples}{nice}"
    variant = f"Tuning, variant (bench/bench_tune.py {' '.join(sys.argv[1:])})"
    title = "Tuning (bench/bench_tune.py)" if default else variant
    write_section(name, title, body)
    print(f"Wrote the section '{title}' of {BENCH_DIR / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
