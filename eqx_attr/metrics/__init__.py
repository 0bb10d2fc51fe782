"""Evaluation metrics: Equinox modules, one example in, a scalar out."""

from ._base import AbstractMetric as AbstractMetric
from ._completeness import Completeness as Completeness
from ._complexity import Complexity as Complexity, Sparseness as Sparseness
from ._correlation import (
    FaithfulnessCorrelation as FaithfulnessCorrelation,
    SensitivityN as SensitivityN,
)
from ._deletion import Deletion as Deletion, Insertion as Insertion
from ._flipping import Monotonicity as Monotonicity, PixelFlipping as PixelFlipping
from ._infidelity import Infidelity as Infidelity
from ._leaderboard import (
    Leaderboard as Leaderboard,
    demo_leaderboard as demo_leaderboard,
    leaderboard as leaderboard,
)
from ._localisation import (
    AttributionLocalisation as AttributionLocalisation,
    PointingGame as PointingGame,
    RelevanceMassAccuracy as RelevanceMassAccuracy,
    RelevanceRankAccuracy as RelevanceRankAccuracy,
    TopKIntersection as TopKIntersection,
)
from ._randomisation import MPRT as MPRT, RandomLogit as RandomLogit
from ._region import RegionPerturbation as RegionPerturbation
from ._road import ROAD as ROAD, linear_imputation as linear_imputation
from ._sensitivity import (
    LocalLipschitzEstimate as LocalLipschitzEstimate,
    SensitivityMax as SensitivityMax,
)
from ._similarity import spearman as spearman, ssim as ssim
