"""``selma3d study``: does self-supervised pretraining pay, and at which label budget?

``plan`` (settings, presets, the grid of arms) → ``runner`` (pretraining once per method, every
arm, resumable) → ``stats`` (paired differences, intervals, verdicts) → ``report`` (tables,
curves, HTML).
"""
