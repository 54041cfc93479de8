from libtraffic.pipeline.pipeline import run_model


def hyper_parameter(*args, **kwargs):
    """LibCity's hyper_parameter(); imported lazily so run_model does not load Ray."""
    from libtraffic.pipeline.tuning import hyper_parameter as tune_main

    return tune_main(*args, **kwargs)


__all__ = ["hyper_parameter", "run_model"]
