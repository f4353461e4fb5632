#!/usr/bin/env python3
"""Reference for scripts/bench_qwen3_5.sh: a random Qwen3.5 text model, and the LoRA training step on it
in PyTorch + PEFT running transformers' own torch implementation of the Gated DeltaNet layers (no
flash-linear-attention, no causal-conv1d: what a CPU user runs).

  --write DIR   writes the random model (f32 safetensors, config.json) that both sides train on
  DIR           trains on it: fp32, torch.set_num_threads(N), AdamW (torch defaults), clipping 1.0,
                LoRA r 8 on all linear layers, the token pattern of bench_train.rs. Prints tokens/s
                and peak RSS.
"""
import argparse
import resource
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--write", action="store_true")
for k, v in dict(hidden=512, layers=8, heads=8, kv_heads=2, head_dim=64, inter=1536, vocab=32000, linear_k_heads=4,
                 linear_v_heads=8, linear_head_dim=64, interval=4, batch=2, seq=512, steps=5, threads=2,
                 r=8).items():
    ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
a = ap.parse_args()
torch.set_num_threads(a.threads)

if a.write:
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(0)
    cfg = Qwen3_5TextConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.inter, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
        linear_num_key_heads=a.linear_k_heads, linear_num_value_heads=a.linear_v_heads,
        linear_key_head_dim=a.linear_head_dim, linear_value_head_dim=a.linear_head_dim,
        full_attention_interval=a.interval, tie_word_embeddings=True, max_position_embeddings=8192,
    )
    model = Qwen3_5ForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(a.dir)
    print(f"wrote {a.dir}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"layer types {cfg.layer_types}")
    raise SystemExit(0)

import peft  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32, attn_implementation="sdpa")
model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + b * 104729 + 13) % vocab for i in range(a.seq)] for b in range(a.batch)])


def step():
    opt.zero_grad()
    loss = model(ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach())


for _ in range(2):
    step()
t = time.perf_counter()
for _ in range(a.steps):
    loss = step()
s = (time.perf_counter() - t) / a.steps
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"peft [torch {torch.__version__}, peft {peft.__version__}, {a.threads} threads] qwen3_5_text hidden {a.hidden} "
      f"layers {a.layers} batch {a.batch} seq {a.seq} r {a.r}: {s:.3f} s/step, {a.batch * a.seq / s:.1f} tokens/s, "
      f"loss {loss:.4f}, peak RSS {rss:.0f} MB")
