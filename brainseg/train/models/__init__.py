from brainseg.train.models.registry import MODELS, build_model, check_model_names

__all__ = ["MODELS", "build_model", "check_model_names"]
