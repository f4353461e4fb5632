#!/usr/bin/env python3
"""Golden fixtures for DPO: TRL's DPOTrainer with a PEFT LoRA on the tiny Llama of
tests/fixtures/models/llama, replayed step for step by crates/train/tests/it/dpo.rs.

Writes tests/fixtures/dpo/ (committed, small):
  data.jsonl                 the preference pairs (TRL's standard form: prompt, chosen, rejected strings)
  data_chat.jsonl            conversational pairs (message lists; the tiny Llama's chat template)
  data_implicit.jsonl        implicit-prompt pairs (whole conversations, and texts, sharing a beginning)
  <run>/adapter-init/        the step-0 PEFT adapter (r 4, alpha 8, q_proj v_proj down_proj, dropout 0)
  <run>/adapter-trained/     the adapter after the run's steps
  golden.json                per run: settings, TRL's token ids of each pair (prompt, chosen, rejected
                             after its tokenization, EOS appended), and every step's logged loss and
                             metrics; package versions and seeds

Runs:
  sigmoid   loss_type sigmoid, beta 0.1, from PEFT's default init (B = 0: the first loss is ln 2)
  ipo       loss_type ipo, beta 0.5, from an init whose B is random (policy != reference at step 0)
  chat      loss_type sigmoid, beta 0.2, on the conversational pairs
  rpo       loss_type ["sigmoid", "sft"], loss_weights [1, 0.5] (an SFT term on the chosen), random B
  implicit  TRL's token ids of the implicit-prompt pairs (its dataset preparation only)
  simpo     trl.experimental's CPOTrainer, loss_type "simpo", beta 2, gamma 0.5, cpo_alpha 0.5, random B
  orpo      trl.experimental's ORPOTrainer, beta 0.5, random B

Every step sees all the pairs (batch = dataset), so the shuffle changes only their order within
the batch. AdamW as torch with weight decay 0, constant learning rate 1e-3, clipping 1.0, f32.
Needs: torch, transformers, peft, trl (1.x), datasets.
Run: python scripts/make_dpo_fixtures.py
"""

import json
import os
import shutil

import datasets
import peft
import torch
import transformers
import trl
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

SEED = 2718
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
BASE = os.path.join(ROOT, "models", "llama")
OUT = os.path.join(ROOT, "dpo")
STEPS = 5

PAIRS = [
    {"prompt": "The sky is", "chosen": " blue today.", "rejected": " green."},
    {"prompt": "Two plus two makes", "chosen": " four.", "rejected": " five, or maybe six."},
    {"prompt": "Water boils at", "chosen": " one hundred degrees.", "rejected": " ten."},
    {"prompt": "Say hello:", "chosen": " Hello!", "rejected": " No."},
]

CHAT_PAIRS = [
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "chosen": [{"role": "assistant", "content": "Blue, on a clear day."}],
     "rejected": [{"role": "assistant", "content": "Green."}]},
    {"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Two plus two?"}],
     "chosen": [{"role": "assistant", "content": "Four."}],
     "rejected": [{"role": "assistant", "content": "Five, I think."}]},
    {"prompt": [{"role": "user", "content": "Greet me."}],
     "chosen": [{"role": "assistant", "content": "Hello there!"}],
     "rejected": [{"role": "assistant", "content": "No."}]},
]

# Implicit prompts: chosen and rejected are whole conversations (or texts) sharing their beginning.
IMPLICIT_PAIRS = [
    {"chosen": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}],
     "rejected": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A brick."}]},
    {"chosen": "The capital of France is Paris.", "rejected": "The capital of France is Rome."},
]

RUNS = {
    "sigmoid": dict(loss_type="sigmoid", beta=0.1, random_b=False),
    "ipo": dict(loss_type="ipo", beta=0.5, random_b=True),
    "chat": dict(loss_type="sigmoid", beta=0.2, random_b=False, pairs=CHAT_PAIRS, data="data_chat.jsonl"),
    "rpo": dict(loss_type="sigmoid", beta=0.1, random_b=True, sft_weight=0.5),
}

METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected"]


def run(name, loss_type, beta, random_b, pairs=PAIRS, data="data.jsonl", sft_weight=0.0):
    tokenizer, model, out = step0_adapter(name, SEED, random_b)

    args = DPOConfig(
        output_dir=os.path.join("/tmp", f"dpo-fixture-{name}"), beta=beta,
        loss_type=[loss_type, "sft"] if sft_weight else [loss_type],
        loss_weights=[1.0, sft_weight] if sft_weight else None,
        per_device_train_batch_size=len(pairs), gradient_accumulation_steps=1, max_steps=STEPS,
        learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1, save_strategy="no", report_to="none", seed=SEED, use_cpu=True, bf16=False, fp16=False,
        dataloader_num_workers=0, precompute_ref_log_probs=False, max_length=None,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                         processing_class=tokenizer)
    tokenized = [
        {"prompt": r["prompt_ids"], "chosen": r["chosen_ids"], "rejected": r["rejected_ids"]}
        for r in trainer.train_dataset
    ]
    steps = train_and_save(trainer, model, out)
    return {
        "loss_type": loss_type, "beta": beta, "label_smoothing": 0.0, "sft_weight": sft_weight, "learning_rate": 1e-3, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "b_init": "random 0.2 N(0,1)" if random_b else "zero (PEFT default)", "data": data,
        "pairs": tokenized, "pad_token_id": tokenizer.pad_token_id, "steps": steps,
    }


def step0_adapter(name, seed, random_b):
    """The tiny Llama with a fresh PEFT adapter (r 4, alpha 8, q/v/down_proj, dropout 0), its B random
    when `random_b` (policy != base at step 0), saved as <name>/adapter-init."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    if random_b:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.2 * torch.randn_like(p))
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(os.path.join(out, "adapter-init"))
    return tokenizer, model, out


def train_and_save(trainer, model, out):
    """Runs the trainer; its logged steps' metrics, the trained adapter saved as adapter-trained."""
    trainer.train()
    steps = [{k: e[k] for k in METRICS} for e in trainer.state.log_history if "rewards/chosen" in e]
    assert len(steps) == STEPS, trainer.state.log_history
    model.save_pretrained(os.path.join(out, "adapter-trained"))
    return steps


def train_legacy(trainer, model, out):
    """The token ids a legacy (CPO / ORPO) trainer trained on, as pairs (the prompt is the masked
    part of each sequence), then its run: the logged steps, the trained adapter saved."""
    pairs = []
    for r in trainer.train_dataset:
        n = sum(1 for l in r["chosen_labels"] if l == -100)
        m = sum(1 for l in r["rejected_labels"] if l == -100)
        assert n == m and r["chosen_input_ids"][:n] == r["rejected_input_ids"][:m], "prompts differ"
        pairs.append({"prompt": r["chosen_input_ids"][:n], "chosen": r["chosen_input_ids"][n:],
                      "rejected": r["rejected_input_ids"][m:]})
    return pairs, train_and_save(trainer, model, out)


def run_simpo(name="simpo", beta=2.0, gamma=0.5, cpo_alpha=0.5):
    """SimPO as TRL 1.x has it: trl.experimental's CPOTrainer with loss_type="simpo", from a random-B
    adapter (SimPO has no reference). CPO tokenizes with its own older code, so the pairs recorded are
    the token ids it trained on (prompt = the masked part of each sequence)."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tokenizer, model, out = step0_adapter(name, SEED + 1, True)
    args = CPOConfig(
        output_dir=os.path.join("/tmp", f"dpo-fixture-{name}"), loss_type="simpo", beta=beta, simpo_gamma=gamma,
        cpo_alpha=cpo_alpha, per_device_train_batch_size=len(PAIRS), max_steps=STEPS, learning_rate=1e-3,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", seed=SEED, use_cpu=True, bf16=False, fp16=False,
        dataloader_num_workers=0,
    )
    trainer = CPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(PAIRS),
                         processing_class=tokenizer)
    pairs, steps = train_legacy(trainer, model, out)
    return {
        "loss_type": "simpo", "beta": beta, "gamma": gamma, "label_smoothing": 0.0, "sft_weight": cpo_alpha,
        "learning_rate": 1e-3, "weight_decay": 0.0, "max_grad_norm": 1.0, "b_init": "random 0.2 N(0,1)",
        "data": "data.jsonl (tokenized by CPOTrainer)", "reference": "none", "pairs": pairs,
        "pad_token_id": tokenizer.pad_token_id, "steps": steps,
    }


def run_orpo(name="orpo", beta=0.5):
    """ORPO as TRL 1.x has it: trl.experimental's ORPOTrainer (reference-free; its NLL term covers
    the chosen sequences whole, prompt included), from a random-B adapter; the recorded pairs are
    the token ids it trained on."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tokenizer, model, out = step0_adapter(name, SEED + 2, True)
    args = ORPOConfig(
        output_dir=os.path.join("/tmp", f"dpo-fixture-{name}"), beta=beta,
        per_device_train_batch_size=len(PAIRS), max_steps=STEPS, learning_rate=1e-3, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none",
        seed=SEED, use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
    )
    trainer = ORPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(PAIRS),
                          processing_class=tokenizer)
    pairs, steps = train_legacy(trainer, model, out)
    return {
        "loss_type": "orpo", "beta": beta, "label_smoothing": 0.0, "sft_weight": 1.0, "learning_rate": 1e-3,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "b_init": "random 0.2 N(0,1)",
        "data": "data.jsonl (tokenized by ORPOTrainer)", "reference": "none", "pairs": pairs,
        "pad_token_id": tokenizer.pad_token_id, "steps": steps,
    }


def tokenized_only(pairs):
    """TRL's token ids of pairs, from its dataset preparation alone (one record at a time: a dataset
    holds one type per column)."""
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    args = DPOConfig(output_dir="/tmp/dpo-fixture-tokenize", report_to="none", use_cpu=True, max_length=None)
    out = []
    for p in pairs:
        model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))
        trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list([p]),
                             processing_class=tokenizer)
        r = trainer.train_dataset[0]
        out.append({"prompt": r["prompt_ids"], "chosen": r["chosen_ids"], "rejected": r["rejected_ids"]})
    return out


def write_jsonl(name, pairs):
    with open(os.path.join(OUT, name), "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    write_jsonl("data.jsonl", PAIRS)
    write_jsonl("data_chat.jsonl", CHAT_PAIRS)
    write_jsonl("data_implicit.jsonl", IMPLICIT_PAIRS)
    golden = {name: run(name, **settings) for name, settings in RUNS.items()}
    golden["implicit"] = {"data": "data_implicit.jsonl", "pairs": tokenized_only(IMPLICIT_PAIRS)}
    golden["simpo"] = run_simpo()
    golden["orpo"] = run_orpo()
    golden["provenance"] = {
        "script": "scripts/make_dpo_fixtures.py", "seed": SEED, "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__,
        "datasets": datasets.__version__,
    }
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
