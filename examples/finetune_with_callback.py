"""Fine-tune a Llama-family model with a standard ``Trainer`` that prunes it first with ParetoPruningCallback.

The callback scans the model on the forget and retain sets when training begins and
prunes the selected MLP neurons. Fine-tuning on the retain set then adapts the rest of
the network, while the pruned neurons stay at zero. The result is saved with
``save_pretrained``: a plain Llama checkpoint plus ``neuron_masks.safetensors``, the
pruning record in ``config.json`` and a model card.

Run from the repository root, for example:

    python examples/finetune_with_callback.py --output runs/finetuned-pruned --max-samples 64 --max-steps 50

With ``--lora`` only LoRA adapters are trained; they are merged into the model before saving.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from pathlib import Path

from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

from hf_integration import ParetoPruningCallback, ParetoPruningConfig, PrunedLlamaForCausalLM
from hf_integration.loading import DTYPES, cache_dir, load_model_and_tokenizer
from hf_integration.output_dir import check_output_dir
from pareto_prune.config import STRATEGIES
from pareto_prune.data import IGNORE_INDEX, load_qa_sources, tokenize_pairs

logger = logging.getLogger("finetune_with_callback")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="Directory for the fine-tuned, pruned checkpoint.")
    parser.add_argument("--model", default=None, help="Checkpoint directory or Hub id (default: SmolLM2-135M-Instruct).")
    parser.add_argument("--forget", nargs="+", default=["tofu:forget01"], help="Forget-set sources (default: %(default)s).")
    parser.add_argument("--retain", nargs="+", default=["tofu:retain99"], help="Retain-set sources, also the training data (default: %(default)s).")
    parser.add_argument("--max-samples", type=int, default=256, help="Maximum question-answer pairs per set; 0 for all (default: %(default)s).")
    parser.add_argument("--strategy", choices=STRATEGIES, default="hypervolume_budget", help="Neuron selection strategy (default: %(default)s).")
    parser.add_argument("--budget", type=float, default=0.02, help="Fraction of all MLP neurons to prune (default: %(default)s).")
    parser.add_argument("--when", choices=("train_begin", "train_end"), default="train_begin", help="Prune before or after fine-tuning (default: %(default)s).")
    parser.add_argument("--max-length", type=int, default=512, help="Maximum tokens per sample (default: %(default)s).")
    parser.add_argument("--epochs", type=float, default=1.0, help="Passes over the retain set (default: %(default)s).")
    parser.add_argument("--max-steps", type=int, default=-1, help="Optimizer steps; overrides --epochs when positive (default: %(default)s).")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="Peak AdamW learning rate (default: %(default)s).")
    parser.add_argument("--batch-size", type=int, default=8, help="Samples per optimizer step and per scan batch (default: %(default)s).")
    parser.add_argument("--lora", action="store_true", help="Train LoRA adapters on all projections instead of the full model.")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="Weight dtype (default: %(default)s).")
    parser.add_argument("--cpu", action="store_true", help="Train on the CPU even when a GPU is available.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for sampling, shuffling and LoRA initialisation (default: %(default)s).")
    return parser.parse_args(argv)


def training_samples(tokenizer, pairs, config: ParetoPruningConfig) -> list[dict[str, list[int]]]:
    """Tokenize pairs into causal-LM samples whose loss covers the answer tokens only."""
    samples = tokenize_pairs(tokenizer, pairs, config.text_format(), max_length=config.max_length)
    return [
        {
            "input_ids": sample.input_ids,
            "labels": [IGNORE_INDEX] * sample.prompt_length + sample.input_ids[sample.prompt_length :],
        }
        for sample in samples
    ]


def add_lora(model):
    """Wrap ``model`` with LoRA adapters (rank 8) on every attention and MLP projection."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM"))


def main(argv=None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_seed(args.seed)
    # Fail before training if --output is not empty or overlaps the input model.
    output = check_output_dir(args.output, protected=[args.model, cache_dir()])

    config = ParetoPruningConfig(strategy=args.strategy, budget=args.budget, max_length=args.max_length, seed=args.seed)
    forget = load_qa_sources(args.forget, args.max_samples or None, args.seed)
    retain = load_qa_sources(args.retain, args.max_samples or None, args.seed)
    config.forget_sources, config.retain_sources = list(args.forget), list(args.retain)

    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, model_class=PrunedLlamaForCausalLM)
    pruned_model = model
    if args.lora:
        model = add_lora(model)

    # With save_strategy="no" the Trainer writes nothing of value, so its directory is temporary.
    trainer_dir = tempfile.TemporaryDirectory(prefix="finetune-trainer-")
    training_args = TrainingArguments(
        output_dir=trainer_dir.name,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        logging_steps=max(1, math.ceil(len(retain) / args.batch_size / 10)),
        save_strategy="no",
        report_to=[],
        use_cpu=args.cpu,
        seed=args.seed,
    )
    callback = ParetoPruningCallback(config, forget, retain, when=args.when, batch_size=args.batch_size)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=training_samples(tokenizer, retain, config),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    trainer_dir.cleanup()

    if args.lora:
        # Merging adds the LoRA update to pruned rows; save_pretrained writes them as zero again.
        pruned_model = model.merge_and_unload()
    pruned_model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    logger.info("Saved the fine-tuned model with %d pruned neurons to %s.", sum(pruned_model.pruned_counts().values()), output)
    return output


if __name__ == "__main__":
    main()
