"""Optimisers and LR schedulers built from tables of (class, {torch kwarg: config key(s)})."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.registry import lookup

# A tuple of keys becomes a tuple of their values (Adam's betas).
OPTIMIZERS: dict[str, tuple[type, dict[str, Any]]] = {
    "adam": (torch.optim.Adam, {"lr": "learning_rate", "eps": "lr_epsilon", "betas": ("lr_beta1", "lr_beta2"), "weight_decay": "weight_decay"}),
    "sgd": (torch.optim.SGD, {"lr": "learning_rate", "momentum": "lr_momentum", "weight_decay": "weight_decay"}),
    "adagrad": (torch.optim.Adagrad, {"lr": "learning_rate", "eps": "lr_epsilon", "weight_decay": "weight_decay"}),
    "rmsprop": (torch.optim.RMSprop, {"lr": "learning_rate", "alpha": "lr_alpha", "eps": "lr_epsilon", "momentum": "lr_momentum", "weight_decay": "weight_decay"}),
    "sparse_adam": (torch.optim.SparseAdam, {"lr": "learning_rate", "eps": "lr_epsilon", "betas": ("lr_beta1", "lr_beta2")}),
}

SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "multisteplr": (torch.optim.lr_scheduler.MultiStepLR, {"milestones": "steps", "gamma": "lr_decay_ratio"}),
    "steplr": (torch.optim.lr_scheduler.StepLR, {"step_size": "step_size", "gamma": "lr_decay_ratio"}),
    "exponentiallr": (torch.optim.lr_scheduler.ExponentialLR, {"gamma": "lr_decay_ratio"}),
    "cosineannealinglr": (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": "lr_T_max", "eta_min": "lr_eta_min"}),
    "lambdalr": (torch.optim.lr_scheduler.LambdaLR, {"lr_lambda": "lr_lambda"}),
    "reducelronplateau": (torch.optim.lr_scheduler.ReduceLROnPlateau, {"patience": "lr_patience", "factor": "lr_decay_ratio", "threshold": "lr_threshold"}),
}


def _kwargs(table: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    return {arg: tuple(config[k] for k in key) if isinstance(key, tuple) else config[key] for arg, key in table.items()}


def _check_rates(config: Mapping[str, Any]) -> None:
    lr, decay = config["learning_rate"], config["weight_decay"]
    if not (math.isfinite(lr) and lr > 0):
        raise LibTrafficError(f"learning_rate must be a positive, finite number (LibCity's default is 0.01), got {lr}.")
    if not (math.isfinite(decay) and decay >= 0):
        raise LibTrafficError(f"weight_decay must be a finite number >= 0 (0 turns it off), got {decay}.")


def build_optimizer(model: nn.Module, config: Mapping[str, Any]) -> torch.optim.Optimizer:
    _check_rates(config)
    name = config["learner"]
    cls, table = lookup(OPTIMIZERS, name.lower(), "learner", where="config key 'learner'")
    if cls is torch.optim.SparseAdam:
        raise LibTrafficError("learner 'sparse_adam' needs sparse gradients, which this model does not produce; use 'adam'.")
    return cls(model.parameters(), **_kwargs(table, config))


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.USub: operator.neg,
        ast.UAdd: operator.pos}
_FUNCS = {"min": min, "max": max, "abs": abs}
#: name -> (fewest, most arguments, as said in a message)
_ARITY = {"min": (2, 64, "two or more arguments"), "max": (2, 64, "two or more arguments"), "abs": (1, 1, "one argument")}
_LAMBDA_ERRORS = {ZeroDivisionError: "it divides by zero", OverflowError: "the result is too large",
                  RecursionError: "it is nested too deeply"}
#: Longest lr_lambda text; with floats only, every operation is O(1), so evaluation takes microseconds.
MAX_LAMBDA_CHARS = 200


def lr_lambda_from_text(text: str, max_epoch: int = 1) -> Callable[[int], float]:
    """Compile an arithmetic expression of ``epoch`` (e.g. '0.95 ** epoch') into a function.

    Only numbers, ``epoch``, + - * / // % ** and min/max/abs are allowed; nothing is eval'ed.
    All arithmetic is in floats (no unbounded integer powers), and the expression is checked for
    every epoch 0 .. max_epoch - 1 up front: it must give a finite factor >= 0 each time.
    """
    if len(text) > MAX_LAMBDA_CHARS:
        raise LibTrafficError(f"lr_lambda is {len(text)} characters long; keep it under {MAX_LAMBDA_CHARS}.")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as err:
        raise LibTrafficError(f"lr_lambda {text!r} is not an expression of epoch: {err.msg}.") from err

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _ARITY:
            low, high, shown = _ARITY[node.func.id]
            if not low <= len(node.args) <= high:
                raise LibTrafficError(f"lr_lambda {text!r}: {node.func.id}() takes {shown}, got {len(node.args)}.")

    def evaluate(node: ast.AST, epoch: float) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id == "epoch":
            return epoch
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](evaluate(node.left, epoch), evaluate(node.right, epoch))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](evaluate(node.operand, epoch))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and node.args \
                and not node.keywords:
            return _FUNCS[node.func.id](*(evaluate(a, epoch) for a in node.args))
        raise LibTrafficError(
            f"lr_lambda {text!r}: only numbers, 'epoch', + - * / // % ** and min/max/abs are allowed."
        )

    def factor(epoch: int) -> float:
        try:
            value = evaluate(tree, float(epoch))
        except (ArithmeticError, ValueError, RecursionError) as err:  # 1 / 0, 9. ** 9. ** 9., too deep
            reason = _LAMBDA_ERRORS.get(type(err), str(err))
            raise LibTrafficError(f"lr_lambda {text!r} cannot be computed at epoch {epoch}: {reason}.") from err
        if isinstance(value, complex):
            raise LibTrafficError(f"lr_lambda {text!r} gives a complex number at epoch {epoch} (a negative number "
                                  "to a fractional power); it must give a finite factor >= 0.")
        if not math.isfinite(value) or value < 0:
            raise LibTrafficError(f"lr_lambda {text!r} gives {value!r} at epoch {epoch}; it must give a finite "
                                  "factor >= 0 of the learning rate for every epoch.")
        return value

    for epoch in _epochs_to_check(max_epoch):
        factor(epoch)
    return factor


def _epochs_to_check(max_epoch: int, first: int = 1000, spread: int = 200) -> list[int]:
    """The epochs lr_lambda is checked at before training: the first ``first`` ones, then ``spread``
    epochs spaced geometrically up to the last, so the check costs the same for any max_epoch. An
    epoch not checked here is still checked when the scheduler reaches it (the same message)."""
    last = max(max_epoch, 1) - 1
    if last < first + spread:
        return list(range(last + 1))
    return list(range(first)) + sorted({int(round(e)) for e in np.geomspace(first, last, spread)})


def build_scheduler(optimizer: torch.optim.Optimizer, config: Mapping[str, Any]):
    """The LR scheduler named by lr_scheduler, or None when lr_decay is false."""
    if not config["lr_decay"]:
        return None
    cls, table = lookup(SCHEDULERS, config["lr_scheduler"].lower(), "lr_scheduler", where="config key 'lr_scheduler'")
    kwargs = _kwargs(table, config)
    for arg in ("step_size", "T_max"):  # torch divides by them at the first step
        if arg in kwargs and kwargs[arg] < 1:
            raise LibTrafficError(f"{table[arg]} must be a positive number of epochs, got {kwargs[arg]}.")
    milestones = kwargs.get("milestones", [])
    if not all(isinstance(m, int) and not isinstance(m, bool) for m in milestones):
        raise LibTrafficError(f"steps must list epoch numbers (e.g. [5, 20]), got {milestones!r}.")
    if cls is torch.optim.lr_scheduler.ReduceLROnPlateau and kwargs["factor"] >= 1:
        raise LibTrafficError(
            f"lr_decay_ratio is {kwargs['factor']}, but ReduceLROnPlateau multiplies the learning rate by it when the "
            "validation loss stops improving, so it must be below 1 (e.g. 0.1).")
    if "lr_lambda" in kwargs:
        kwargs["lr_lambda"] = lr_lambda_from_text(kwargs["lr_lambda"], config["max_epoch"])
    return cls(optimizer, **kwargs)
