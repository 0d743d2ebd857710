"""Self-supervised pretraining methods (byol, multitask, inpainting, dino, simclr) behind one
interface (:class:`selma3d.ssl.base.SSLMethod`); build one with :func:`build_method`."""

from .base import METHODS, SSLMethod, build_method, method_class, method_names

__all__ = ["METHODS", "SSLMethod", "build_method", "method_class", "method_names"]
