"""DCRNN's adj_mx.pkl: ``[sensor_ids, sensor_id_to_ind, adj_mx]``, pickled by Python 2.

Python 2 stored the array's raw bytes as a ``str``, so Python 3 reads it only with
``encoding='latin1'`` (DCRNN's own load_pickle falls back to it). The unpickler admits only the
NumPy names such a file holds: a pickle that names anything else is refused, not executed.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from libtraffic.data.convert.readers import first_duplicate, normalize_ids
from libtraffic.utils.errors import LibTrafficError

try:  # NumPy 2 (pickles written by NumPy 1 name numpy.core.multiarray)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

_ALLOWED = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", _multiarray._reconstruct), ("scalar", _multiarray.scalar))
}
_ALLOWED.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype})
_ALLOWED[("_codecs", "encode")] = codecs.encode  # bytes in protocol-2 pickles written by Python 3


class _GraphUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which an adj_mx.pkl never holds") from None


@dataclass
class AdjPickle:
    """ids: (M,) sensor ids in matrix order; matrix: (M, M) float weights (0 = no edge)."""

    ids: np.ndarray
    matrix: np.ndarray


_UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
                      AttributeError, OverflowError)


def read_adj_pickle(path: Path) -> AdjPickle:
    """Load and check DCRNN's adj_mx.pkl (latin-1 strings, as DCRNN's Python 2 wrote them)."""
    try:
        with open(path, "rb") as handle:
            content = _GraphUnpickler(handle, encoding="latin1").load()
    except OSError as err:
        raise LibTrafficError(f"Cannot read {path}: {err.strerror}.") from err
    except _UNPICKLING_ERRORS as err:
        raise LibTrafficError(
            f"Cannot read {path} as DCRNN's adj_mx.pkl (a pickle of [sensor_ids, sensor_id_to_ind, adj_mx]): "
            f"{err or type(err).__name__}.") from err
    if not isinstance(content, (list, tuple)) or len(content) != 3:
        raise LibTrafficError(f"{path} should hold [sensor_ids, sensor_id_to_ind, adj_mx]; it holds a {type(content).__name__}"
                              f"{f' of {len(content)} items' if isinstance(content, (list, tuple)) else ''}.")
    raw_ids, to_ind, matrix = content
    if not isinstance(raw_ids, (list, tuple, np.ndarray)) or not isinstance(matrix, np.ndarray):
        raise LibTrafficError(f"{path}: expected a list of sensor ids and a NumPy matrix, got "
                              f"{type(raw_ids).__name__} and {type(matrix).__name__}.")
    ids = normalize_ids(raw_ids, str(path))
    if matrix.shape != (len(ids), len(ids)) or not np.issubdtype(matrix.dtype, np.number):
        raise LibTrafficError(f"{path}: adj_mx has shape {matrix.shape} and type {matrix.dtype}; expected a "
                              f"numeric ({len(ids)}, {len(ids)}) matrix for its {len(ids)} sensor ids.")
    if first_duplicate(ids) is not None:
        raise LibTrafficError(f"{path}: sensor id {first_duplicate(ids)} is listed twice.")
    if isinstance(to_ind, dict) and any(to_ind.get(raw) != i for i, raw in enumerate(raw_ids)):
        raise LibTrafficError(f"{path}: sensor_id_to_ind disagrees with the order of sensor_ids.")
    if not np.isfinite(matrix).all():
        raise LibTrafficError(f"{path}: adj_mx holds NaN or infinite weights.")
    return AdjPickle(ids, matrix)
