r"""Train an LLM and a ColBERT retriever together with JMLR (the paper's MedQA recipe, or yours).

    accelerate launch --config_file examples/accelerate/multi_gpu_ddp.yaml examples/train_medqa.py \
        --config examples/configs/paper-13b.yaml
    accelerate launch examples/train_medqa.py --config examples/configs/paper-7b.yaml --learning_rate 1e-4
    python examples/train_medqa.py --config examples/configs/cpu-demo.yaml          # a few CPU steps

Every field of ``ModelArguments``, ``DataArguments`` (``jmlr_hf.recipe``) and ``JMLRTrainingArguments`` is a
config key and a ``--flag``; flags win over the config. ``python examples/train_medqa.py --help`` lists
them all. The same recipe runs as ``jmlr train --config ...``.
"""

from __future__ import annotations

import logging
import sys

from jmlr_hf.recipe import parse_args, run_training


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_args(argv, prog="train_medqa.py")
    logging.basicConfig(
        level=logging.INFO if training_args.should_log else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    trainer = run_training(model_args, data_args, training_args)
    if trainer.is_world_process_zero():
        print(
            f"Saved the LLM to {training_args.output_dir}, the retriever to {training_args.output_dir}/retriever"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
