"""recdistill core: config, data, models, distillation, training, evaluation, storage, db and the job use case."""

__version__ = "0.1.0"
