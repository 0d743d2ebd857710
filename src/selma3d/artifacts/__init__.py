"""The artifacts one stage writes and the next reads, each a typed, versioned contract saved and
loaded in one place and written atomically (:mod:`selma3d.utils.atomic`):

- :mod:`~selma3d.artifacts.encoder`: ``encoder.pt``, the encoder weights and the
  :class:`~selma3d.artifacts.encoder.AdaptationPlan` finetuning applies;
- :mod:`~selma3d.artifacts.run`: the finetuned run folder (``model.pt`` + ``run.json``) predict reads;
- :mod:`~selma3d.artifacts.router`: ``router.pt``, the spot/tree structure router.
"""
