"""Conversion of a pretrained multi-head attention model into a MossNet (spec section 8).

* ``llama``    refusals, the config, and the exact part of the mapping (heads -> experts,
               copied embeddings, norms, MLPs, LM head);
* ``init``     the parts the teacher has no counterpart for, and their calibration on the
               teacher's own activations;
* ``report``   per-layer relative error of each mixer against the teacher's attention on the
               teacher's layer inputs (also the building block of attention-transfer distillation);
* ``pipeline`` ``mossnet convert``: teacher in, run directory out.

docs/CONVERSION.md explains every choice and what is not preserved.
"""

from .init import CalibrationGrid
from .pipeline import ConvertOptions, convert_teacher
from .report import TeacherActivations, capture_teacher, layer_errors, mixer_outputs, relative_error

__all__ = ["CalibrationGrid", "ConvertOptions", "TeacherActivations", "capture_teacher", "convert_teacher",
           "layer_errors", "mixer_outputs", "relative_error"]
