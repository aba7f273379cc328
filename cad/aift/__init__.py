"""The shared numpy implementation of the method: candidate -> patches, and AIFT scoring.

Serving, training and benchmarks all call these functions, so the patch the
server classified is exactly the patch the trainer learns from.
"""

from cad.aift.baselines import (
    BASELINES,
    KEYED,
    MARGIN,
    QUEUE_ORDERS,
)
from cad.aift.patches import (
    RECIPES,
    Box,
    Recipe,
    extract_patches,
    parse_recipe,
    validate_box,
)
from cad.aift.scoring import (
    DEFAULT_VARIANT,
    EPS,
    RANDOM,
    VARIANTS,
    CandidateStats,
    Variant,
    aift_scores,
    candidate_probability,
    candidate_stats,
    degenerate_variants,
    total_diversity,
    total_entropy,
)

__all__ = [
    "BASELINES",
    "KEYED",
    "MARGIN",
    "DEFAULT_VARIANT",
    "EPS",
    "QUEUE_ORDERS",
    "RANDOM",
    "RECIPES",
    "VARIANTS",
    "Box",
    "CandidateStats",
    "Recipe",
    "Variant",
    "aift_scores",
    "candidate_probability",
    "candidate_stats",
    "degenerate_variants",
    "extract_patches",
    "parse_recipe",
    "total_diversity",
    "total_entropy",
    "validate_box",
]
