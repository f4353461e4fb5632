#!/usr/bin/env python3
"""Reference for scripts/bench_moe.sh: a random Qwen3-MoE model (Qwen3-30B-A3B's width reduced in depth by
default: hidden 2048, 128 experts of width 768, top 8, 32/4 heads of 128), and the LoRA training step on
it in PyTorch + PEFT running transformers 5's own expert implementation (its default, what a CPU user
runs) with PEFT's LoRA on the experts (target_parameters, converted from gate/up/down_proj).

  --write DIR   writes the random model (f32 safetensors, config.json) that both sides train on
  DIR           trains on it: fp32, torch.set_num_threads(N), AdamW (torch defaults), clipping 1.0,
                LoRA r 8 on q/k/v/o_proj and the experts' gate/up/down_proj, the token pattern of
                bench_train.rs. Prints tokens/s, the share of the step in the expert blocks, and peak RSS.
"""
import argparse
import resource
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--write", action="store_true")
for k, v in dict(hidden=2048, layers=2, heads=32, kv_heads=4, head_dim=128, moe_inter=768, experts=128, top_k=8,
                 vocab=32000, batch=1, seq=512, steps=3, threads=2, r=8).items():
    ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
a = ap.parse_args()
torch.set_num_threads(a.threads)

if a.write:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=6144, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
        moe_intermediate_size=a.moe_inter, num_experts=a.experts, num_experts_per_tok=a.top_k, norm_topk_prob=True,
        tie_word_embeddings=False, max_position_embeddings=8192,
    )
    model = Qwen3MoeForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(a.dir)
    print(f"wrote {a.dir}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    raise SystemExit(0)

import peft  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32, attn_implementation="sdpa")
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + b * 104729 + 13) % vocab for i in range(a.seq)] for b in range(a.batch)])

# Time spent in the expert blocks' forward (their backward is not separable by hooks; reported as
# the forward share).
in_experts = [0.0]


def timed(module):
    orig = module.forward

    def fwd(*args, **kw):
        t = time.perf_counter()
        out = orig(*args, **kw)
        in_experts[0] += time.perf_counter() - t
        return out

    module.forward = fwd


for name, m in model.named_modules():
    if name.endswith("mlp.experts"):
        timed(m)


def step():
    opt.zero_grad()
    t = time.perf_counter()
    loss = model(ids, labels=ids).loss
    fwd = time.perf_counter() - t
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach()), fwd


for _ in range(1):
    step()
in_experts[0] = 0.0
t = time.perf_counter()
fwd_total = 0.0
for _ in range(a.steps):
    loss, fwd = step()
    fwd_total += fwd
s = (time.perf_counter() - t) / a.steps
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"peft [torch {torch.__version__}, peft {peft.__version__}, {a.threads} threads] qwen3_moe hidden {a.hidden} "
      f"layers {a.layers} experts {a.experts} top {a.top_k} batch {a.batch} seq {a.seq} r {a.r}: {s:.3f} s/step, "
      f"{a.batch * a.seq / s:.1f} tokens/s, experts {100 * in_experts[0] / fwd_total:.0f}% of the forward, "
      f"loss {loss:.4f}, peak RSS {rss:.0f} MB")
