"""Explanations: why a classifier decided what it did, and whether the explanation is faithful.

It sits after inference (it decodes files and opens models as prediction does) and before
serving, whose /v1/classify returns heatmaps with explain=true.
"""

from imgcls.explain.explanation import METHODS, default_method, explain, network_layers
from imgcls.explain.results import Explanation, Neighbour

__all__ = ["METHODS", "Explanation", "Neighbour", "default_method", "explain", "network_layers"]
