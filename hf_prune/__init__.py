"""hf_prune: structured pruning of attention heads, MLP neurons and whole blocks for Hugging Face transformers."""

__version__ = "0.1.0"

from . import fluctuation, routing  # noqa: F401  (register the fluctuation, frequency and reap criteria)
from .allocation import LayerPlan, plan_pruning
from .calibration import CalibrationData, CalibrationError, prepare_calibration, self_generate
from .callback import PruningCallback
from .card import build_model_card, write_card
from .checkpoint import from_pretrained, save_pretrained
from .config import PruningConfig
from .depth import DepthPlan, plan_depth, remove_blocks
from .evaluation import Evaluation, evaluate_model
from .export import ExportError, export_checkpoint
from .flops import Cost, measure_cost
from .hub import push_to_hub
from .importance import Importance, available_importances, calibrate, get_importance, register_importance
from .kinds import UnitKind, register_kind
from .masks import MaskSet
from .prune import PruningReport, apply_plan, prune
from .recipe import Recipe, RecipeError, shipped_recipes
from .schedule import Schedule
from .structure import ModelStructure
from .trainer import DistillationConfig, PruningTrainer
from .verify import PrunedModelError

__all__ = [
    "CalibrationData",
    "CalibrationError",
    "Cost",
    "DepthPlan",
    "DistillationConfig",
    "Evaluation",
    "ExportError",
    "Importance",
    "LayerPlan",
    "MaskSet",
    "ModelStructure",
    "PrunedModelError",
    "PruningCallback",
    "PruningConfig",
    "PruningReport",
    "PruningTrainer",
    "Recipe",
    "RecipeError",
    "Schedule",
    "UnitKind",
    "__version__",
    "apply_plan",
    "available_importances",
    "build_model_card",
    "calibrate",
    "evaluate_model",
    "export_checkpoint",
    "from_pretrained",
    "get_importance",
    "measure_cost",
    "plan_depth",
    "plan_pruning",
    "prepare_calibration",
    "prune",
    "push_to_hub",
    "register_importance",
    "register_kind",
    "remove_blocks",
    "save_pretrained",
    "self_generate",
    "shipped_recipes",
    "write_card",
]
