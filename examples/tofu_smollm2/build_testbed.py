"""Fine-tune SmolLM2-135M-Instruct into a TOFU unlearning testbed: a *full* and a *retain* model.

Base SmolLM2 never saw the fictitious TOFU authors, so there is nothing to forget until it
learns them. This script trains two models from the same base with the same schedule:

* ``full``: the forget split plus a retain subset (the first ``--retain-size`` rows of
  ``retain90``, which are also the first rows of ``retain_perturbed``, so the subset covers
  the retain questions that ``pareto-prune eval --max-samples N`` asks for N <= retain size);
* ``retain``: the retain subset only, the reference that unlearning should approach.

Each model is saved under ``--output/<name>`` and skipped when it already exists, so an
interrupted build resumes at the next model. Training uses the same chat-template format as
``pareto-prune prune`` and ``pareto-prune eval`` (system prompt "You are a helpful
assistant."), with loss on answer tokens only.

Run (from the repository root):

    python examples/tofu_smollm2/build_testbed.py --output runs/testbed
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_integration.loading import load_model_and_tokenizer
from pareto_prune.config import PruningConfig
from pareto_prune.data import length_grouped_batches, load_qa_pairs, tokenize_pairs

logger = logging.getLogger("build_testbed")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="Directory for the full/ and retain/ checkpoints.")
    parser.add_argument("--model", default=None, help="Base checkpoint (default: SmolLM2-135M-Instruct).")
    parser.add_argument("--forget-split", default="forget05", help="TOFU forget split to learn (default: %(default)s).")
    parser.add_argument("--retain-size", type=int, default=100, help="Rows of retain90 to learn (default: %(default)s).")
    parser.add_argument("--epochs", type=int, default=8, help="Passes over the training set (default: %(default)s).")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="Peak AdamW learning rate (default: %(default)s).")
    parser.add_argument("--batch-size", type=int, default=8, help="Samples per optimizer step (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="Seed for shuffling and initialisation (default: %(default)s).")
    return parser.parse_args(argv)


def training_pairs(name: str, args: argparse.Namespace):
    retain = load_qa_pairs("tofu:retain90")[: args.retain_size]
    if name == "retain":
        return retain
    return load_qa_pairs(f"tofu:{args.forget_split}") + retain


def _learning_rate(step: int, total: int, peak: float) -> float:
    # Linear warm-up over the first 5% of steps, then cosine decay to 10% of the peak.
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(name: str, args: argparse.Namespace, target: Path) -> dict:
    """Fine-tune one model from the base and save it to ``target``; return its training record."""
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32")
    # The tied input/output embedding stays frozen: it saves a large gradient and keeps
    # the vocabulary as it was, while attention and MLP weights learn the facts.
    model.get_input_embeddings().weight.requires_grad_(False)

    pairs = training_pairs(name, args)
    samples = tokenize_pairs(tokenizer, pairs, PruningConfig().text_format())
    batches = length_grouped_batches(samples, args.batch_size, tokenizer.pad_token_id)
    total_steps = args.epochs * len(batches)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.0)

    model.train()
    started = time.time()
    losses = []
    progress = tqdm(total=total_steps, desc=f"train {name}", unit="step")
    for epoch in range(args.epochs):
        order = list(range(len(batches)))
        rng.shuffle(order)
        for index in order:
            step = progress.n
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, total_steps, args.learning_rate)
            batch = batches[index]
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels()).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    progress.close()

    model.eval()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    record = {
        "name": name,
        "pairs": len(pairs),
        "forget_split": args.forget_split if name == "full" else None,
        "retain_rows": args.retain_size,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "steps": total_steps,
        "seconds": round(time.time() - started, 1),
        "final_loss": sum(losses[-len(batches):]) / len(batches),
        "torch_threads": torch.get_num_threads(),
    }
    (target / "testbed_training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    output = Path(args.output)
    for name in ("full", "retain"):
        target = output / name
        if (target / "config.json").is_file():
            logger.info("%s exists; skipping (delete it to retrain).", target)
            continue
        record = train(name, args, target)
        logger.info("Trained %s in %.0f s (final epoch loss %.3f).", name, record["seconds"], record["final_loss"])


if __name__ == "__main__":
    main()
