"""Shape-aware pretraining: learn the geometry the downstream task needs (SELMA3D's open problem).

The SELMA3D paper found self-supervised pretraining helped a tree-like structure and slightly hurt
a spot-like one, and named SSL aware of each structure type's shape as the open problem. This
method's pretext tasks are computed on the fly from the unannotated patch itself:

* **shape-map regression** — from a masked, photometrically jittered view, the dense network
  predicts multi-scale Hessian descriptors of the *clean* patch (blobness, tubularity,
  plateness; :mod:`selma3d.ssl.shape_maps`), i.e. where cells, vessels and sheets are and how
  thick they are, also under the masked blocks;
* **foreground-weighted masked inpainting** of the raw intensities: masked voxels on blobs and
  tubes weigh ``1 + foreground_weight`` times more, so thin processes are not drowned by the
  background that fills most of a light-sheet patch;
* **structure type** (spot vs tree, as the BioAI team classified structures): a linear head on
  the pooled bottleneck, when the volumes of the batch come from both families.

Output channels of the backbone: 1 reconstruction + 3 × len(scales) maps.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Selma3dError
from .base import SSLMethod
from .heads import pooled
from .losses.shape import foreground_weights, shape_regression_loss, weighted_masked_l1
from .shape_maps import DEFAULT_SCALES, DESCRIPTORS, shape_maps
from .views import random_block_mask, random_intensity, random_noise

TYPES = ("spot", "tree")


class ShapeAware(SSLMethod):
    def __init__(self, backbone: nn.Module, patch_size: Sequence[int], num_structures: int = 1,
                 structure_types: Sequence[str] | None = None, scales: Sequence[float] = DEFAULT_SCALES,
                 mask_ratio: float = 0.4, block_size: int | Sequence[int] | None = None,
                 foreground_weight: float = 4.0, weight_shape: float = 1.0, weight_inpainting: float = 1.0,
                 weight_type: float = 0.1):
        super().__init__(backbone)
        if not 0.0 < float(mask_ratio) < 1.0:
            raise Selma3dError(f"shape: mask_ratio must lie in (0, 1), got {mask_ratio}")
        if not scales or any(float(s) <= 0 for s in scales):
            raise Selma3dError(f"shape: scales must be positive voxel sigmas, got {scales}")
        if structure_types is not None and any(t not in TYPES for t in structure_types):
            raise Selma3dError(f"shape: structure types must be spot or tree, got {list(structure_types)}")
        self.patch_size = tuple(patch_size)
        self.scales = tuple(float(s) for s in scales)
        self.mask_ratio = float(mask_ratio)
        self.block_size = block_size or tuple(max(1, p // 8) for p in self.patch_size)
        self.foreground_weight = float(foreground_weight)
        self.weights = {"shape": float(weight_shape), "inpainting": float(weight_inpainting),
                        "type": float(weight_type)}
        # structure index (the sampler's) -> 0 spot / 1 tree
        types = list(structure_types or [])
        self.register_buffer("type_of_structure", torch.tensor([TYPES.index(t) for t in types], dtype=torch.long),
                             persistent=False)
        self.type_head = nn.Linear(backbone.encoder_channels, len(TYPES))
        self._bottleneck: torch.Tensor | None = None
        backbone.encoder.register_forward_hook(self._keep_bottleneck)

    def _keep_bottleneck(self, module, inputs, output) -> None:
        self._bottleneck = output[-1] if isinstance(output, (list, tuple)) else output

    @classmethod
    def backbone_model_options(cls, model_options, patch_size, options):
        """One output channel per map (plus the image): the count depends on the ``scales`` option,
        which the class-level ``backbone_options`` cannot know."""
        scales = options.get("scales", DEFAULT_SCALES)
        return {**model_options, "out_channels": 1 + len(DESCRIPTORS) * len(scales)}

    def recipe(self) -> dict:
        """What encoder.pt records of this pretraining (the pretext tasks and their weights)."""
        return {"tasks": ["shape_maps", "foreground_inpainting", "structure_type"], "scales": list(self.scales),
                "descriptors": list(DESCRIPTORS), "mask_ratio": self.mask_ratio,
                "foreground_weight": self.foreground_weight, "weights": dict(self.weights),
                "structure_types": [TYPES[i] for i in self.type_of_structure.tolist()]}

    def view(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked blocks (set to 0, mid-gray) plus intensity jitter and noise; no geometric change,
        so the clean patch's maps stay aligned with the view."""
        mask = random_block_mask(x.shape, self.mask_ratio, self.block_size, device=x.device)
        view = random_noise(random_intensity(torch.where(mask, torch.zeros_like(x), x), 0.1, 0.1), 0.05)
        return view, mask

    def training_loss(self, batch):
        x = batch["image"]
        maps = shape_maps(x, self.scales)
        view, mask = self.view(x)
        out = self.backbone(view)
        reconstruction, predicted = out[:, :1], out[:, 1:]
        values = {}
        values["shape"], targets = shape_regression_loss(predicted, maps)
        weights = foreground_weights(targets, len(self.scales), self.foreground_weight)
        values["inpainting"] = weighted_masked_l1(reconstruction, x, mask, weights)
        if self.type_of_structure.numel():
            structure = torch.as_tensor(batch["structure"], device=x.device).long()
            kinds = self.type_of_structure.to(x.device)[structure]
            if kinds.unique().numel() > 1:  # one family only: nothing to tell apart
                vector = pooled(self._bottleneck)
                values["type"] = F.cross_entropy(self.type_head(vector), kinds)
        loss = sum(self.weights[name] * value for name, value in values.items())
        logs = {f"loss_{name}": value.detach() for name, value in values.items()}
        logs["loss"] = loss.detach()
        logs["foreground_weight_mean"] = weights.mean().detach()
        return loss, logs
