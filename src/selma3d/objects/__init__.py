"""Objects across blocks: instance labels, per-object tables, density maps and skeleton statistics
of a whole-volume binary mask, computed block by block with memory bounded by the block size.

Modules: ``blocks`` (grid geometry and block reads), ``journal`` (resumable progress),
``labels`` (blockwise connected components joined across faces), ``table`` (per-object moments),
``density`` (counts per coarse voxel), ``skeleton`` (tree-like statistics with skan), ``regions``
(per-region summary), ``pipeline`` (the ``selma3d stats`` run that ties them together)."""
