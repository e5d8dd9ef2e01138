"""nas_core: DARTS neural architecture search, from data to a tested model.

``nas_core.load_model("results/mnist")`` returns a trained model with its preprocessing and
class names (:mod:`nas_core.inference`); it is imported on first use, so ``import nas_core``
does not import torch (``nas_core.gpu`` must choose the GPUs before torch starts).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    if name == "load_model":
        from nas_core.inference import load_model

        return load_model
    raise AttributeError(f"module 'nas_core' has no attribute {name!r}")
