#!/usr/bin/env python3
"""Golden fixtures for KTO: TRL 1.x's KTOTrainer with a PEFT LoRA on the tiny Llama of
tests/fixtures/models/llama, replayed step for step by crates/train/tests/it/kto.rs.

Writes into tests/fixtures/dpo/ (committed, small):
  kto_data.jsonl             unpaired examples (TRL's form: prompt, completion, label), strings
  kto_data_chat.jsonl        unpaired conversational examples (message lists)
  <run>/adapter-init/        the step-0 PEFT adapter (r 4, alpha 8, q_proj v_proj down_proj, dropout 0)
  <run>/adapter-trained/     the adapter after the run's steps
  kto_golden.json            per run: settings, TRL's tokenized examples in training order (prompt,
                             completion, the mismatched KL completion, label), the micro-batch size,
                             and every step's logged loss and metrics; versions and seeds

Runs (every one from a random-B adapter, so that policy != reference and the KL term is live):
  kto         loss_type kto, beta 0.1, undesirable_weight 1.5, 6 examples in micro-batches of 3,
              2 per step (gradient accumulation)
  kto_chat    loss_type kto, beta 0.2, conversational examples, micro-batches of 2, 2 per step
  kto_paired  loss_type kto, beta 0.1, on data.jsonl's preference pairs, which TRL unpairs (every
              chosen, then every rejected): micro-batches of 4 hold one side only
  apo         loss_type apo_zero_unpaired (no KL term), beta 0.3, as kto's data

TRL samples sequentially for KTO, so the recorded order is the training order. AdamW as torch with
weight decay 0, constant learning rate 1e-3, clipping 1.0, f32.
Needs: torch, transformers (>= 5.2), peft, trl (1.x), datasets.
Run: python scripts/make_kto_fixtures.py
"""

import json
import os

import datasets
import peft
import torch
import transformers
import trl
from trl import KTOConfig, KTOTrainer

from make_dpo_fixtures import OUT, PAIRS, SEED, step0_adapter

STEPS = 4

EXAMPLES = [
    {"prompt": "The sky is", "completion": " blue today.", "label": True},
    {"prompt": "Two plus two makes", "completion": " five, or maybe six.", "label": False},
    {"prompt": "Water boils at", "completion": " one hundred degrees.", "label": True},
    {"prompt": "Say hello:", "completion": " Hello!", "label": True},
    {"prompt": "The capital of France is", "completion": " Rome.", "label": False},
    {"prompt": "Grass is", "completion": " green.", "label": True},
]

CHAT_EXAMPLES = [
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "completion": [{"role": "assistant", "content": "Blue, on a clear day."}], "label": True},
    {"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Two plus two?"}],
     "completion": [{"role": "assistant", "content": "Five, I think."}], "label": False},
    {"prompt": [{"role": "user", "content": "Greet me."}],
     "completion": [{"role": "assistant", "content": "Hello there!"}], "label": True},
    {"prompt": [{"role": "user", "content": "Name a fruit."}],
     "completion": [{"role": "assistant", "content": "A brick."}], "label": False},
]

RUNS = {
    "kto": dict(loss_type="kto", beta=0.1, undesirable_weight=1.5, examples=EXAMPLES, data="kto_data.jsonl",
                batch=3, seed=SEED + 10),
    "kto_chat": dict(loss_type="kto", beta=0.2, examples=CHAT_EXAMPLES, data="kto_data_chat.jsonl", batch=2,
                     seed=SEED + 11),
    "kto_paired": dict(loss_type="kto", beta=0.1, examples=PAIRS, data="data.jsonl", batch=4, seed=SEED + 12),
    "apo": dict(loss_type="apo_zero_unpaired", beta=0.3, examples=EXAMPLES, data="kto_data.jsonl", batch=3,
                seed=SEED + 13),
}

METRICS = ["loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"]


def run(name, loss_type, beta, examples, data, batch, seed, desirable_weight=1.0, undesirable_weight=1.0):
    tokenizer, model, out = step0_adapter(name, seed, True)
    args = KTOConfig(
        output_dir=os.path.join("/tmp", f"kto-fixture-{name}"), loss_type=loss_type, beta=beta,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
        per_device_train_batch_size=batch, gradient_accumulation_steps=2, max_steps=STEPS, learning_rate=1e-3,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", seed=SEED, use_cpu=True, bf16=False, fp16=False,
        dataloader_num_workers=0, precompute_ref_log_probs=False, max_length=None, gradient_checkpointing=False,
    )
    trainer = KTOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(examples),
                         processing_class=tokenizer)
    tokenized = [
        {"prompt": r["prompt_ids"], "completion": r["completion_ids"],
         "kl_completion": r.get("KL_completion_ids"), "label": bool(r["label"])}
        for r in trainer.train_dataset
    ]
    trainer.train()
    steps = [{k: e[k] for k in METRICS if k in e} for e in trainer.state.log_history if "kl" in e]
    assert len(steps) == STEPS, trainer.state.log_history
    model.save_pretrained(os.path.join(out, "adapter-trained"))
    return {
        "loss_type": loss_type, "beta": beta, "desirable_weight": desirable_weight,
        "undesirable_weight": undesirable_weight, "learning_rate": 1e-3, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "b_init": "random 0.2 N(0,1)", "reference": "the step-0 adapter (TRL's \"ref\" copy)", "data": data,
        "batch_size": batch, "grad_accum": 2, "examples": tokenized, "pad_token_id": tokenizer.pad_token_id,
        "steps": steps,
    }


def write_jsonl(name, rows):
    with open(os.path.join(OUT, name), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    write_jsonl("kto_data.jsonl", EXAMPLES)
    write_jsonl("kto_data_chat.jsonl", CHAT_EXAMPLES)
    golden = {name: run(name, **settings) for name, settings in RUNS.items()}
    golden["provenance"] = {
        "script": "scripts/make_kto_fixtures.py", "seed": SEED, "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__,
        "datasets": datasets.__version__,
    }
    with open(os.path.join(OUT, "kto_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
