"""Joint training: arguments, the trainer, rank losses and the collator.

``PromptBuilder`` (:mod:`jmlr_hf.prompting`), ``answer_nll`` (:mod:`jmlr_hf.scoring`) and ``kendall_tau``
(:mod:`jmlr_hf.evaluation.metrics`) are re-exported here for the import paths of earlier versions.
"""

from ..evaluation.metrics import kendall_tau
from ..prompting import PromptBuilder
from ..scoring import answer_nll
from .arguments import JMLRTrainingArguments
from .collator import QACollator
from .losses import llm_rank_loss, pdist_loss
from .trainer import JMLRTrainer, JointStepOutput

__all__ = [
    "JMLRTrainer",
    "JMLRTrainingArguments",
    "JointStepOutput",
    "PromptBuilder",
    "QACollator",
    "answer_nll",
    "kendall_tau",
    "llm_rank_loss",
    "pdist_loss",
]
