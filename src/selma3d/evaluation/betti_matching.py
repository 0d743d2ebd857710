"""Betti matching error (Stucki et al., ICML 2023) through the Betti-Matching-3D C++ library.

The library's Python module ``betti_matching`` is found either installed on its own (built
from nstucki/Betti-Matching-3D) or inside the ``topolosses`` wheel, which ships it compiled.
``topolosses`` itself is not imported: its package ``__init__`` imports torchvision, which
this project cannot depend on; we load only the compiled module from its file. Install it
with ``pip install --no-deps topolosses``.

Convention (the library's, as its Betti matching loss uses it for binary masks): the
superlevel filtration of a mask, i.e. the sublevel filtration of ``1 - mask``; the matching
is induced through the comparison image; the error in dimension k is the number of
unmatched finite intervals of the prediction plus those of the ground truth. Two facts of
that construction a user must know (docs/evaluation_pitfalls.md): the foreground is
6-connected (two voxels touching by an edge or a corner are two components, unlike the 2024
Betti numbers), and the one essential (infinite) interval of each image is never counted,
so an empty prediction of a one-object ground truth has error 0.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import Selma3dError

INSTALL_HINT = ("the 2025 edition's Betti matching error needs the Betti-Matching-3D module: "
                "pip install --no-deps topolosses (its wheel ships it compiled; its other "
                "dependencies, torchvision included, are not needed)")


@lru_cache(maxsize=1)
def load_betti_matching():
    """The compiled ``betti_matching`` module; :class:`Selma3dError` with the fix when missing."""
    try:
        return importlib.import_module("betti_matching")
    except ImportError:
        pass
    spec = importlib.util.find_spec("topolosses")  # finds the package without running its __init__
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "losses" / "betti_matching" / "src"
        for binary in sorted(folder.glob("betti_matching*.so")) + sorted(folder.glob("betti_matching*.pyd")):
            module_spec = importlib.util.spec_from_file_location("betti_matching", binary)
            module = importlib.util.module_from_spec(module_spec)
            try:
                module_spec.loader.exec_module(module)
            except ImportError as exc:
                raise Selma3dError(f"{binary}: cannot load ({exc}); {INSTALL_HINT}") from None
            return module
    raise Selma3dError(INSTALL_HINT)


def betti_matching_errors(gt: np.ndarray, pred: np.ndarray) -> tuple[int, ...]:
    """Betti matching error per dimension (0, 1, 2) of two binary (z, y, x) masks.

    Computed on the whole arrays: cropping to the foreground is *not* exact here (the induced
    matching depends on where components merge at the background level, which the empty space
    changes; a random 12³ case gave 91 instead of 93), so it costs what the library costs:
    about 100 s for a 200³ volume on one core.
    """
    library = load_betti_matching()
    result = library.compute_matching(np.ascontiguousarray(1.0 - pred, dtype=np.float64),
                                      np.ascontiguousarray(1.0 - gt, dtype=np.float64))
    return tuple(int(a) + int(b) for a, b in zip(result.num_unmatched_input1, result.num_unmatched_input2))
