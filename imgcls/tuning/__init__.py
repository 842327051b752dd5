"""Hyperparameter tuning by cross-validation on the training data; the test split is touched once."""

from imgcls.tuning.knn_cv import GRID_KEYS, knn_cross_validation, parse_grid, plot_cv, summarise, tune_knn

__all__ = ["GRID_KEYS", "knn_cross_validation", "parse_grid", "plot_cv", "summarise", "tune_knn"]
