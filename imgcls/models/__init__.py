"""Models: one registry, one factory, one classifier contract."""

from imgcls.models import knn as _knn, linear as _linear, neural as _neural  # noqa: F401  (registers the models)
from imgcls.models import pretrained as _pretrained, transfer as _transfer  # noqa: F401,E402
from imgcls.models.artifact import load_model, read_metadata, save_model
from imgcls.models.base import Classifier, NotFittedError
from imgcls.models.knn import KNNClassifier
from imgcls.models.linear import LinearClassifier
from imgcls.models.registry import create_model, list_models, register



def parameter_count(name: str, shape: tuple[int, int, int], num_classes: int) -> int:
    """Learned parameters of model `name` for images of shape (C, H, W) and num_classes classes."""
    model = create_model(name)
    if hasattr(model, "build_network"):
        return sum(p.numel() for p in model.build_network(shape[0], num_classes, shape[1:]).parameters())
    if name == "linear":
        return (shape[0] * shape[1] * shape[2] + 1) * num_classes
    return 0   # kNN learns no parameters: it memorises the training set


from imgcls.models.pretrained import pretrained_model  # noqa: E402

__all__ = ["parameter_count", "pretrained_model", "Classifier", "KNNClassifier", "LinearClassifier", "NotFittedError",
           "create_model", "list_models", "load_model", "read_metadata", "register", "save_model"]
