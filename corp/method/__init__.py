"""The method, usable from Python without the command line.

Read in this order: perturb (how a member touches a model), population (the search and its log),
ensemble (RandOpt's baselines: best member, top-K vote), consolidate (CoRP: one model from the
rewarded population, every commit gated), export (low-rank factors, PEFT adapter), analysis
(split-half low-rank structure).
"""

from .consolidate import ConsolidationResult, CorpConfig, consolidate
from .ensemble import majority_vote, member_answers, top_k, vote_scores
from .export import LayerFactors, apply_factors_, low_rank_factors, write_adapter
from .perturb import Member, PerturbationSpec, Perturber, parameter_key, state_fingerprint
from .population import PopulationLog, Record, member_seeds, member_sigma, search

__all__ = ["ConsolidationResult", "CorpConfig", "LayerFactors", "Member", "PerturbationSpec",
           "Perturber", "PopulationLog", "Record", "apply_factors_", "consolidate",
           "low_rank_factors", "majority_vote", "member_answers", "member_seeds", "member_sigma",
           "parameter_key", "search", "state_fingerprint", "top_k", "vote_scores",
           "write_adapter"]
