#!/usr/bin/env python3
"""Reference for scripts/bench_dpo.sh: the same DPO training in TRL's DPOTrainer + PEFT.

fp32, sdpa attention, torch.set_num_threads(N), a random Llama of the given shape (tied embeddings),
LoRA r 8 on q_proj and v_proj, AdamW (weight decay 0), lr 1e-4 constant, clipping 1.0, beta 0.1,
sigmoid loss; the pairs are the token pattern of crates/train/examples/bench_dpo.rs, handed to TRL
already tokenized (its dataset preparation is skipped). The reference is the base with the adapter
disabled (TRL with a PEFT model), computed per step or with --precompute once before training.
Prints s/step (the steps after --warmup), pairs/s and peak RSS.
"""
import argparse
import resource
import time

import datasets
import peft
import torch
import transformers
import trl
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl import DPOConfig, DPOTrainer

ap = argparse.ArgumentParser()
for k, v in dict(hidden=576, layers=30, heads=9, kv_heads=3, inter=1536, vocab=49152, pairs=2, prompt=128,
                 completion=128, steps=5, warmup=1, threads=2, r=8).items():
    ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
ap.add_argument("--precompute", action="store_true")
ap.add_argument("--tokenizer", required=True, help="a folder with a tokenizer (pad and EOS ids only are used)")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.inter, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, tie_word_embeddings=True,
                  max_position_embeddings=4096)
model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                         task_type="CAUSAL_LM"))


def seq(p, part, n):
    return [(i * 7919 + p * 104729 + part * 15485863 + 13) % a.vocab for i in range(n)]


rows = [{"prompt_ids": seq(p, 0, a.prompt), "chosen_ids": seq(p, 1, a.completion),
         "rejected_ids": seq(p, 2, a.completion)} for p in range(a.pairs)]
# Every step sees the same pairs, as bench_dpo.rs's.
data = datasets.Dataset.from_list(rows * (a.warmup + a.steps))
DPOTrainer._prepare_dataset = lambda self, dataset, *args, **kwargs: dataset


class Clock(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


clock = Clock()
args = DPOConfig(
    output_dir="/tmp/bench-dpo-trl", beta=0.1, loss_type=["sigmoid"], per_device_train_batch_size=a.pairs,
    max_steps=a.warmup + a.steps, learning_rate=1e-4, lr_scheduler_type="constant", weight_decay=0.0,
    max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
    dataloader_num_workers=0, precompute_ref_log_probs=a.precompute, max_length=None,
)
tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[clock])
trainer.train()
s = (clock.ends[-1] - clock.ends[a.warmup - 1]) / a.steps if a.warmup > 0 else None
loss = [e["loss"] for e in trainer.state.log_history if "loss" in e][-1]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"trl dpo [torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"trl {trl.__version__}, {a.threads} threads] hidden {a.hidden} layers {a.layers} vocab {a.vocab} pairs {a.pairs} "
      f"x ({a.prompt} + {a.completion}){', precomputed reference' if a.precompute else ''}: {s:.3f} s/step, "
      f"{a.pairs / s:.2f} pairs/s, loss {loss:.4f}, peak RSS {rss:.0f} MB")
