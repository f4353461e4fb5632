#!/usr/bin/env python3
"""transformers' greedy `generate` on a model folder on the CPU, timed as examples/bench_generate.rs
times lora's: the prompt's prefill alone, then the whole generation; decode = new tokens / (total -
prefill). Same prompt ids, no stop token. Used by scripts/bench_generate.sh.

Run: python scripts/bench_generate_peft.py MODEL_DIR [--prompt 64] [--new 64] [--threads 2]
"""

import argparse
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--prompt", type=int, default=64)
ap.add_argument("--new", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32)
model.eval()
ids = torch.tensor([[(i * 37 + 11) % 251 for i in range(a.prompt)]])
with torch.no_grad():
    t = time.perf_counter()
    model(ids)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    total = time.perf_counter() - t
made = out.shape[1] - a.prompt
print(f"transformers {transformers.__version__} [torch {torch.__version__}, {a.threads} threads] "
      f"{model.config.model_type} prompt {a.prompt} new {made}: prefill {prefill:.3f} s "
      f"({a.prompt / prefill:.1f} tokens/s), decode {made / max(total - prefill, 1e-9):.1f} tokens/s, "
      f"total {total:.2f} s")
