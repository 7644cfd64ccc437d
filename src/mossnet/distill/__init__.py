"""Distillation of a Transformer teacher into a MossNet student, on the trainer's loss hook.

``objective.py`` holds the two stages as ``LossFn`` objects (``train.step``):

* ``attention``: each MoSSE layer receives the teacher's own input to its attention layer and
  is trained to reproduce that attention's output (mean squared error, all layers at once,
  teacher activations computed on the fly). Only the mixers train.
* ``logits``: KL(teacher || student) on next-token distributions, optionally plus cross-entropy.

``mossnet distill`` (``cli/distill.py``) is ``mossnet train`` with a teacher: same flags,
checkpoints, exact resume, logs and signals. docs/CONVERSION.md has the recipe.
"""

from .objective import STAGES, AttentionTransfer, LogitDistillation, make_objective, trainable_filter

__all__ = ["STAGES", "AttentionTransfer", "LogitDistillation", "make_objective", "trainable_filter"]
