"""corp: RandOpt and CoRP (Consolidating Rewarded Perturbations) on Hugging Face causal LMs.

A population is a list of integer seeds plus rewards; every member's weights are regenerated from
its seed by the corp_kernels ops. Read top to bottom: perturb (how a member touches a model),
tasks (prompts and rewards), evaluate (generation and scoring), population (the search and its
log), ensemble (RandOpt's baselines), consolidate (CoRP), export (LoRA adapter / checkpoint),
analysis (split-half), cli.
"""

__version__ = "0.1.0"
