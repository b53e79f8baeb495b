"""lazydrift: measure how the hidden features of very wide networks move during training.

Public API: :class:`NTKMLP` (the model), :class:`DriftRecorder` (drift of any model's layers in
any training loop), :func:`extract_features` (any model's layer outputs, the recorder's probe
pass), :func:`fused_sgd` and :func:`mse_loss` (the training step), and the kernels in
:mod:`lazydrift.kernels`.
"""

__version__ = "0.1.0"

from .features import FeatureExtractor, extract_features  # noqa: E402
from .model import NTKMLP, layer_scalings  # noqa: E402
from .recorder import DriftRecorder, log_schedule  # noqa: E402
from .train import fused_sgd, mse_loss  # noqa: E402

__all__ = ["NTKMLP", "DriftRecorder", "FeatureExtractor", "extract_features", "fused_sgd", "mse_loss", "layer_scalings", "log_schedule", "__version__"]
