"""corp: RandOpt and CoRP (Consolidating Rewarded Perturbations) on Hugging Face causal LMs.

A population is a list of integer seeds plus rewards; every member's weights are regenerated from
its seed by the corp_kernels ops. Four layers, each importing only the ones before it:

1. shared: `models` (loading, codecs), `tasks` (prompts and rewards, the code sandbox),
   `evaluate` (generation and scoring), `builtin` (the default tiny model, SmolLM2);
2. `method`: perturb, population, ensemble, consolidate, export, analysis: the algorithm,
   usable from Python without the command line;
3. `scale`: distributed search (torchrun) and streaming (low-memory) consolidation;
4. `cli`: the `corp` command, the experiment and the gradient baseline.
"""

__version__ = "0.1.0"
