"""Training runs and evaluation.

- :mod:`clipvip.train.config`: ``TrainConfig`` (typed YAML recipes + ``section.key=value`` overrides);
- :mod:`clipvip.train.loop`: ``train(cfg)``, one process or ``torchrun`` + DDP;
- :mod:`clipvip.train.evaluate`: ``evaluate_retrieval`` (plain and dual-softmax tables);
- :mod:`clipvip.train.checkpoint`: atomic ``last/``/``best/`` folders with exact-resume state;
- :mod:`clipvip.train.sampler`: batch order from (seed, epoch) only, resumable mid-epoch;
- :mod:`clipvip.train.wrapper`: the module DDP wraps (one forward for every stream of a step);
- :mod:`clipvip.train.logging`: JSON-lines evaluation log and TensorBoard scalars;
- :mod:`clipvip.train.distributed`, :mod:`clipvip.train.optim`: process groups and gather with gradient;
  AdamW parameter groups and schedules.

Submodules are imported on demand so that ``import clipvip.train`` stays cheap.
"""
