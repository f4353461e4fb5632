#!/usr/bin/env python3
"""Reference for scripts/bench_train.sh: the same LoRA training step in PyTorch + PEFT.

fp32, sdpa attention, torch.set_num_threads(N), AdamW (torch defaults), r=8 on q_proj and v_proj,
a random Llama of the given shape, the same token pattern. Prints tokens/s and peak RSS.
"""
import argparse
import resource
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
for k, v in dict(hidden=256, layers=4, heads=4, kv_heads=4, inter=688, vocab=1000, batch=4, seq=128, steps=10,
                 threads=2, r=8).items():
    ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
ap.add_argument("--peak-tflops", type=float, default=0.0, help="the machine's fp32 GEMM peak, for the MFU")
ap.add_argument("--measure-peak", action="store_true", help="only print torch's 2048^3 sgemm rate")
ap.add_argument("--dora", action="store_true", help="DoRA adapters (use_dora=True)")
ap.add_argument("--targets", default="q_proj,v_proj", help="all-linear or a comma list of module names")
a = ap.parse_args()
torch.set_num_threads(a.threads)
if a.measure_peak:
    x, y = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        x @ y
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < 2.0:
        x @ y
        n += 1
    print(f"torch sgemm 2048^3, {a.threads} threads: {2 * 2048 ** 3 * n / (time.perf_counter() - t) / 1e9:.1f} GFLOP/s")
    raise SystemExit(0)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.inter, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, tie_word_embeddings=True,
                  max_position_embeddings=4096)
model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
targets = "all-linear" if a.targets == "all-linear" else a.targets.split(",")
model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=16, target_modules=targets, lora_dropout=0.0,
                                         use_dora=a.dora))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.tensor([[(i * 7919 + b * 104729 + 13) % a.vocab for i in range(a.seq)] for b in range(a.batch)])


def step():
    opt.zero_grad()
    loss = model(ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    return float(loss)


for _ in range(2):
    step()
t = time.perf_counter()
for _ in range(a.steps):
    loss = step()
s = (time.perf_counter() - t) / a.steps
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# Model FLOPs per trained token, counted as bench_train.rs counts them.
h, L, kv = a.hidden, a.layers, a.hidden // a.heads * a.kv_heads
frozen = L * (h * (2 * h + 2 * kv) + 3 * h * a.inter) + a.vocab * h
lora = L * a.r * ((h + h) + (h + kv))
tflops = (4 * frozen + 6 * lora + 12 * L * h * a.seq) * a.batch * a.seq / s / 1e12
mfu = f", MFU {100 * tflops / a.peak_tflops:.1f}% of {a.peak_tflops} TFLOP/s" if a.peak_tflops else ""
print(f"peft [torch {torch.__version__}, peft {peft.__version__}, {a.threads} threads] hidden {a.hidden} layers {a.layers} "
      f"batch {a.batch} seq {a.seq} r {a.r}: {s:.3f} s/step, {a.batch * a.seq / s:.1f} tokens/s, {tflops:.3f} model TFLOP/s{mfu}, loss {loss:.4f}, "
      f"peak RSS {rss:.0f} MB")
