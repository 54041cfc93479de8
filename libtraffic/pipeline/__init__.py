"""run_model's pipeline (Ray-free) and LibCity's hyper_parameter entry point, which lives in libtraffic.tune."""

from libtraffic.pipeline.pipeline import run_model


def hyper_parameter(*args, **kwargs):
    """LibCity's libcity.pipeline.hyper_parameter; see libtraffic.tune.hyper_parameter (imported on call, so
    that run_model never loads Ray)."""
    from libtraffic.tune import hyper_parameter as tune_main

    return tune_main(*args, **kwargs)


__all__ = ["hyper_parameter", "run_model"]
