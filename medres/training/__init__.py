"""The training engine: losses, optimizers and schedules, the loop, checkpoints, distribution, tracking.

Kept light on purpose: import the submodules you need (``medres.training.losses``,
``medres.training.optim``, ...); nothing heavy is imported here.
"""
