"""selma3d: self-supervised segmentation of 3D light-sheet microscopy, SELMA3D-style."""

__version__ = "0.1.0"
