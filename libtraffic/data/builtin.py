"""The built-in datasets: generated in METR_LA's schema on first use (libtraffic.data.synthetic), so that a
first run needs no download. Kept free of imports so that the CLIs' --help can list them at once."""

#: name -> the synthetic generator's settings (sensors, days, seed).
BUILTIN_DATASETS: dict[str, dict] = {
    "SYNTH_LA": {"num_nodes": 20, "num_days": 14, "seed": 0},
}
