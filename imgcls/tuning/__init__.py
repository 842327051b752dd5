"""Hyperparameter tuning by cross-validation on the training data; the test split is touched once."""

from imgcls.tuning.knn_cv import GRID_KEYS, knn_cross_validation, parse_grid, plot_cv, summarise, tune_knn
from imgcls.tuning.test_log import record_test_evaluation, test_evaluations

__all__ = ["GRID_KEYS", "knn_cross_validation", "parse_grid", "plot_cv", "record_test_evaluation", "summarise",
           "test_evaluations", "tune_knn"]
