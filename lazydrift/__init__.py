"""lazydrift: measure how the hidden features of very wide networks move during training.

The public API, everything a researcher imports:

* the network: :class:`NTKMLP`, :func:`layer_scalings`, :func:`fused_sgd`, :func:`mse_loss`;
* recording any model: :class:`DriftRecorder`, :func:`log_schedule`, :class:`FeatureExtractor`,
  :func:`extract_features`;
* the closed-form ReLU kernels (Theorem 1, Definition 4) and the kernel predictor
  (Propositions 3 and 6): :func:`relu_ntk`, :func:`relu_nngp`, :func:`relu_kernels`,
  :func:`normalized_kernel`, :func:`gradient_descent_mse`;
* the finite network's kernel: :func:`empirical_ntk`, :class:`KernelDriftTracker`;
* experiments from recipes: :func:`load_recipe`, :func:`run_recipe`.
"""

__version__ = "0.1.0"

from .empirical import empirical_ntk  # noqa: E402
from .experiment import run_recipe  # noqa: E402
from .features import FeatureExtractor, extract_features  # noqa: E402
from .kernel_drift import KernelDriftTracker  # noqa: E402
from .kernels import normalized_kernel, relu_kernels, relu_nngp, relu_ntk  # noqa: E402
from .model import NTKMLP, layer_scalings  # noqa: E402
from .recipes import load_recipe  # noqa: E402
from .recorder import DriftRecorder, log_schedule  # noqa: E402
from .regression import gradient_descent_mse  # noqa: E402
from .train import fused_sgd, mse_loss  # noqa: E402

__all__ = ["NTKMLP", "layer_scalings", "fused_sgd", "mse_loss",
           "DriftRecorder", "log_schedule", "FeatureExtractor", "extract_features",
           "relu_ntk", "relu_nngp", "relu_kernels", "normalized_kernel", "gradient_descent_mse",
           "empirical_ntk", "KernelDriftTracker",
           "load_recipe", "run_recipe", "__version__"]
