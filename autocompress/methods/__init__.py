"""One module per family of the survey's taxonomy; importing this package fills the registry."""
from . import distillation, pruning, quantization  # noqa: F401
from .base import REGISTRY, Context, RecipeError, TransferSet, get_method  # noqa: F401
