"""Models: one registry, one factory, one classifier contract."""

from imgcls.models import knn as _knn, linear as _linear  # noqa: F401  (register the built-in models)
from imgcls.models.artifact import load_model, read_metadata, save_model
from imgcls.models.base import Classifier
from imgcls.models.knn import KNNClassifier
from imgcls.models.linear import LinearClassifier
from imgcls.models.registry import create_model, list_models, register

__all__ = ["Classifier", "KNNClassifier", "LinearClassifier", "create_model", "list_models", "load_model",
           "read_metadata", "register", "save_model"]
