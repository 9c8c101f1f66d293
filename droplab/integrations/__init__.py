"""Integrations with training frameworks, each importing its library only when its module is imported.

* :mod:`droplab.integrations.lightning`: a Lightning callback driving dropout schedules, with its state
  in the checkpoint, and an MC-prediction helper for ``predict_step``.
* :mod:`droplab.integrations.huggingface`: a ``transformers.TrainerCallback`` driving dropout schedules,
  and MC prediction on ``PreTrainedModel`` outputs.

Install the libraries with ``pip install 'droplab[integrations]'``. timm's and torchvision's dropout
classes need no integration module: :mod:`droplab.library_rules` converts them by class name.
"""

__all__ = ["lightning", "huggingface"]


def _require(module: str, extra: str = "integrations"):
    """Import ``module`` or fail with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"this droplab integration needs {module.split('.')[0]}: pip install 'droplab[{extra}]'"
                          ) from error
