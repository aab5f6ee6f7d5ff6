"""ferkit: facial expression recognition with a fast, faithful MBA-CNN."""

__version__ = "0.1.0"

from .data import FaceSet  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .recognize import Face, Recognizer  # noqa: E402
from .weights import load_model  # noqa: E402

__all__ = [
    "Face",
    "FaceSet",
    "Recognizer",
    "__version__",
    "create_model",
    "list_models",
    "load_model",
]
