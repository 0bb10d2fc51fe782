"""Evaluation metrics: Equinox modules, one example in, a scalar out."""

from ._completeness import Completeness as Completeness
