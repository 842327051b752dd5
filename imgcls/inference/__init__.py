"""Inference: saved models applied to image files."""

from imgcls.inference.predict import find_images, predict_files

__all__ = ["find_images", "predict_files"]
