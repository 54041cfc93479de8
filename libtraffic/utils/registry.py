"""Name -> component lookup that fails loudly with the valid names and a did-you-mean."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

from libtraffic.utils.errors import LibTrafficError

T = TypeVar("T")


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, transpositions."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest choice, or '' when nothing is close."""
    choices = [str(c) for c in choices]
    if not choices:
        return ""
    scored = sorted(
        (_edit_distance(name.lower(), c.lower()), -difflib.SequenceMatcher(None, name, c).ratio(), c)
        for c in choices
    )
    distance, _, best = scored[0]
    if distance <= max(2, len(name) // 3):
        return f" Did you mean '{best}'?"
    # A shortened name ('grid' for 'grid_search', 'BayesOpt' for 'BayesOptSearch').
    prefixed = [c for c in choices if len(name) >= 3 and c.lower().startswith(name.lower())]
    return f" Did you mean '{prefixed[0]}'?" if len(prefixed) == 1 else ""


def lookup(registry: Mapping[str, T], name: str, kind: str, where: str = "") -> T:
    """Return ``registry[name]``; otherwise raise LibTrafficError listing the valid names.

    ``kind`` names what is looked up ("model", "learner"); ``where`` says where the name came
    from (a flag or file) so the message can point the user there.
    """
    if name in registry:
        return registry[name]
    source = f" (from {where})" if where else ""
    valid = ", ".join(sorted(registry))
    raise LibTrafficError(
        f"Unknown {kind} '{name}'{source}.{did_you_mean(str(name), registry)} Valid values: {valid}."
    )
