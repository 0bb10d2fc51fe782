"""Evaluation metrics: Equinox modules, one example in, a scalar out."""

from ._agreement import (
    Consistency as Consistency,
    Sufficiency as Sufficiency,
    first_signs as first_signs,
)
from ._arcc import (
    ARCC as ARCC,
    Coherency as Coherency,
    arcc_score as arcc_score,
    coherency_pearson as coherency_pearson,
    scale_cam as scale_cam,
)
from ._base import AbstractMetric as AbstractMetric
from ._cam_mult import (
    CamMultImageConfidenceChange as CamMultImageConfidenceChange,
)
from ._completeness import Completeness as Completeness
from ._complexity import Complexity as Complexity, Sparseness as Sparseness
from ._correlation import (
    FaithfulnessCorrelation as FaithfulnessCorrelation,
    SensitivityN as SensitivityN,
)
from ._deletion import Deletion as Deletion, Insertion as Insertion
from ._efficient_mprt import (
    EfficientMPRT as EfficientMPRT,
    discrete_entropy as discrete_entropy,
)
from ._flipping import Monotonicity as Monotonicity, PixelFlipping as PixelFlipping
from ._infidelity import Infidelity as Infidelity
from ._irof import IROF as IROF
from ._leaderboard import (
    Leaderboard as Leaderboard,
    demo_leaderboard as demo_leaderboard,
    leaderboard as leaderboard,
)
from ._localisation import (
    AttributionLocalisation as AttributionLocalisation,
    Focus as Focus,
    PointingGame as PointingGame,
    RelevanceMassAccuracy as RelevanceMassAccuracy,
    RelevanceRankAccuracy as RelevanceRankAccuracy,
    TopKIntersection as TopKIntersection,
)
from ._pic import (
    AIC as AIC,
    SIC as SIC,
    griddata_blur as griddata_blur,
    webp_information as webp_information,
)
from ._randomisation import MPRT as MPRT, RandomLogit as RandomLogit
from ._region import RegionPerturbation as RegionPerturbation
from ._road import (
    ROAD as ROAD,
    ROADConfidenceChange as ROADConfidenceChange,
    linear_imputation as linear_imputation,
)
from ._sensitivity import (
    LocalLipschitzEstimate as LocalLipschitzEstimate,
    SensitivityMax as SensitivityMax,
)
from ._similarity import spearman as spearman, ssim as ssim
from ._smooth_mprt import SmoothMPRT as SmoothMPRT
