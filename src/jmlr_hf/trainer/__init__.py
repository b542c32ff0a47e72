"""Joint training: arguments, the trainer, rank losses and the prompt collator."""

from .arguments import JMLRTrainingArguments
from .collator import PromptBuilder, QACollator, answer_nll
from .losses import kendall_tau, llm_rank_loss, pdist_loss
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
