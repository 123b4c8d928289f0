"""Optimizers. Importing this package registers every optimizer torchvalley ships."""

from torchvalley.optim import torch_baselines  # noqa: F401  (registers sgd, adam, adamw)
