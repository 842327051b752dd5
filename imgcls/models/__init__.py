"""Models: one registry, one factory, one classifier contract."""

from imgcls.models import knn as _knn, linear as _linear, neural as _neural  # noqa: F401  (registers the models)
from imgcls.models import pretrained as _pretrained, transfer as _transfer  # noqa: F401,E402
from imgcls.models.artifact import load_model, read_metadata, save_model
from imgcls.models.base import Capabilities, Classifier, NotFittedError
from imgcls.models.knn import KNNClassifier
from imgcls.models.linear import LinearClassifier
from imgcls.models.registry import create_model, list_models, register



def parameter_count(name: str, shape: tuple[int, int, int], num_classes: int) -> int:
    """Learned parameters of model `name` (default settings) for images of shape (C, H, W) and
    num_classes classes (see Classifier.parameter_count_for)."""
    return create_model(name).parameter_count_for(shape, num_classes)


from imgcls.models.pretrained import pretrained_model  # noqa: E402

__all__ = ["parameter_count", "pretrained_model", "Capabilities", "Classifier", "KNNClassifier", "LinearClassifier",
           "NotFittedError", "create_model", "list_models", "load_model", "read_metadata", "register", "save_model"]
