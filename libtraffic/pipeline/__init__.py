from libtraffic.pipeline.pipeline import run_model

__all__ = ["run_model"]
