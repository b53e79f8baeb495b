"""lazydrift: measure how the hidden features of very wide networks move during training.

Public API: :class:`NTKMLP` (the model), :class:`DriftRecorder` (hooks for any training loop),
:func:`fused_sgd` and :func:`mse_loss` (the training step), and the kernels in
:mod:`lazydrift.kernels`.
"""

__version__ = "0.1.0"

from .model import NTKMLP, layer_scalings  # noqa: E402
from .recorder import DriftRecorder, log_schedule  # noqa: E402
from .train import fused_sgd, mse_loss  # noqa: E402

__all__ = ["NTKMLP", "DriftRecorder", "fused_sgd", "mse_loss", "layer_scalings", "log_schedule", "__version__"]
