"""Lightning checkpoints written atomically, for pretraining and finetuning alike."""

from __future__ import annotations

from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..utils.atomic import torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file in the same folder, then rename.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the
    system temp dir; on another filesystem the final move is a copy, which a kill can cut short.
    Under DDP only global rank 0 calls it (the strategy decides), so every rank may call
    ``trainer.save_checkpoint``.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        torch_save(checkpoint, path)
