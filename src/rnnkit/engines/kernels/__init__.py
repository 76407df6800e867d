"""The ``bptt`` engine's kernels: one file per cell family, registered by exact cell type.

``base`` holds the :class:`Kernel` protocol, the registry (:func:`register_kernel`,
:func:`plan_for`), per-step layer normalisation and the chunking helpers; importing this
package registers the built-in kernels.
"""

from rnnkit.engines.kernels import elman, gru, lstm  # noqa: F401  (registers the kernels)
from rnnkit.engines.kernels.base import (
    FUSED_MAX,
    Kernel,
    Plan,
    bias_sum,
    grad_w,
    inference_step,
    plan_for,
    register_inference,
    register_kernel,
)

__all__ = ["FUSED_MAX", "Kernel", "Plan", "bias_sum", "grad_w", "inference_step", "plan_for",
           "register_inference", "register_kernel"]
