"""Models, found by name through MODELS."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from libtraffic.model.agcrn import AGCRN
from libtraffic.model.dcrnn import DCRNN
from libtraffic.model.gwnet import GWNET
from libtraffic.model.mtgnn import MTGNN
from libtraffic.model.rnn import RNN
from libtraffic.model.stgcn import STGCN
from libtraffic.model.stid import STID
from libtraffic.model.tgcn import TGCN
from libtraffic.utils.registry import lookup

# Model name (as in task_config.json) -> class. GRU, LSTM and RNN share one class.
MODELS = {"GRU": RNN, "LSTM": RNN, "RNN": RNN, "STID": STID, "GWNET": GWNET, "STGCN": STGCN, "DCRNN": DCRNN,
          "AGCRN": AGCRN, "MTGNN": MTGNN, "TGCN": TGCN}


def get_model(config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> nn.Module:
    return lookup(MODELS, config["model"], "model", where="--model")(config, data_feature)


__all__ = ["AGCRN", "DCRNN", "GWNET", "MODELS", "MTGNN", "RNN", "STGCN", "STID", "TGCN", "get_model"]
