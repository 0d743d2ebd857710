"""Self-supervised pretraining methods behind one interface (:class:`selma3d.ssl.base.SSLMethod`),
listed in :data:`selma3d.ssl.registry.METHODS`; build one with :func:`build_method`.

Parts: losses in :mod:`selma3d.ssl.losses`, heads in :mod:`selma3d.ssl.heads`, EMA targets in
:mod:`selma3d.ssl.ema`, augmented views and masks in :mod:`selma3d.ssl.views`. Importing this
package (the registry) does not import torch, so the command line stays quick to start.
"""

from .registry import METHODS, MethodSpec, build_method, default_models, method_class, method_names, method_spec

__all__ = ["METHODS", "MethodSpec", "SSLMethod", "build_method", "default_models", "method_class",
           "method_names", "method_spec"]


def __getattr__(name: str):
    if name == "SSLMethod":  # imports torch: only on demand
        from .base import SSLMethod

        return SSLMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
