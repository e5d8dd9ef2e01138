"""The compute stages as functions that write files (see docs/architecture.md); the model
card stage is :mod:`nas_core.stages.model_card`."""

from nas_core.stages.common import StageError
from nas_core.stages.genotype import run_genotype
from nas_core.stages.search import run_search
from nas_core.stages.select import run_select
from nas_core.stages.test import run_test
from nas_core.stages.train import run_train

__all__ = ["run_search", "run_genotype", "run_select", "run_train", "run_test", "StageError"]
