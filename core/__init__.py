"""recdistill core: data, models, distillation, training, evaluation, storage and the pipeline."""

__version__ = "0.1.0"
