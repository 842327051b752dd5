"""imgcls: image classification from a folder of labelled pictures to a served model."""

__version__ = "0.1.0"

from imgcls.errors import ImgclsError  # noqa: E402

__all__ = ["ImgclsError", "__version__"]
