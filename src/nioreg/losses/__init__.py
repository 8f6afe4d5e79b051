"""Losses for NIO: similarity measures (LNCC, MIND-SSC, NGF, mutual information), the diffusion regulariser and
the objective (1 − λ)·scale·S + λ·diffusion.

Functional API (:mod:`.functional`, :mod:`.mind`, :mod:`.ngf`, :mod:`.mutual_information`) and ``nn.Module``
wrappers (:mod:`.modules`) side by side; the registry of measures by name is :mod:`.similarity`.
"""

from ._measure import PreparedFeatures
from .functional import REGULARISER_SCALE, PreparedFixed, diffusion, lncc, prepare_fixed, registration_loss
from .mind import mind, mind_ssc_descriptor, prepare_mind
from .modules import LNCC, MIND, NGF, Diffusion, MutualInformation, RegistrationLoss
from .mutual_information import mutual_information
from .ngf import ngf, prepare_ngf
from .similarity import (Similarity, SimilarityEntry, get_similarity, lncc_window, parse_similarity,
                         register_similarity, similarity_names)

__all__ = [
    "lncc",
    "mind",
    "mind_ssc_descriptor",
    "ngf",
    "mutual_information",
    "diffusion",
    "registration_loss",
    "REGULARISER_SCALE",
    "prepare_fixed",
    "prepare_mind",
    "prepare_ngf",
    "PreparedFixed",
    "PreparedFeatures",
    "LNCC",
    "MIND",
    "NGF",
    "MutualInformation",
    "Diffusion",
    "RegistrationLoss",
    "Similarity",
    "SimilarityEntry",
    "register_similarity",
    "get_similarity",
    "parse_similarity",
    "lncc_window",
    "similarity_names",
]
