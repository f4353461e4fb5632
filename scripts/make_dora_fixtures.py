#!/usr/bin/env python3
"""PEFT's DoRA (`use_dora=True`): an adapter file and PEFT's own fold of it, for `lora merge` to equal.

Writes tests/fixtures/lora/dora/ (committed, small):
  adapter/               a PEFT DoRA adapter for tests/fixtures/models/llama: r 4, alpha 8, on q_proj,
                         v_proj and down_proj of every layer; lora_B random and each magnitude vector
                         moved off its initial row norms (seeded), so that both parts of the update count
                         (`...<module>.lora_magnitude_vector` keys, as PEFT saves them)
  merged.safetensors     PEFT's merge_and_unload of it: every weight it changes, and the merged model's
                         logits on IDS (`logits`, [1, T, vocab])
  provenance.json        versions and seed

Run: python scripts/make_dora_fixtures.py
Needs: torch, transformers 5.x, peft 0.21, safetensors.
"""

import json
import os
import shutil
import sys

import peft
import safetensors.torch
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests/fixtures/lora/dora")
LLAMA = os.path.join(ROOT, "tests/fixtures/models/llama")
SEED = 2468
IDS = [0, 5, 17, 42, 99, 200, 383, 7]


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    torch.manual_seed(SEED)
    base = AutoModelForCausalLM.from_pretrained(LLAMA, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    adapter = os.path.join(OUT, "adapter")
    model.save_pretrained(adapter)
    os.remove(os.path.join(adapter, "README.md"))
    cfg_path = os.path.join(adapter, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = "tests/fixtures/models/llama"
    cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with safetensors.safe_open(os.path.join(adapter, "adapter_model.safetensors"), "pt") as f:
        assert any(k.endswith(".lora_magnitude_vector") for k in f.keys()), "PEFT saved no magnitude vectors"
    model.eval()
    merged = model.merge_and_unload()
    with torch.no_grad():
        logits = merged(torch.tensor([IDS])).logits.float()
    sd = {k: v.contiguous() for k, v in merged.state_dict().items()
          if any(m in k for m in ["q_proj", "v_proj", "down_proj"])}
    sd["logits"] = logits.contiguous()
    safetensors.torch.save_file(sd, os.path.join(OUT, "merged.safetensors"))
    prov = {"script": "scripts/make_dora_fixtures.py", "seed": SEED, "python": sys.version.split()[0],
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "ids": IDS}
    with open(os.path.join(OUT, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)


if __name__ == "__main__":
    main()
