#!/usr/bin/env python3
"""Golden fixtures for LoRA: PEFT adapters on the tiny Llama of tests/fixtures/models/llama.

Writes tests/fixtures/lora/ (committed, small):
  adapter-qv/            PEFT adapter (r=4, alpha=8, q_proj+v_proj+down_proj), lora_B randomized
  adapter-rslora/        PEFT adapter (r=2, alpha=4, rsLoRA, all seven linears, layers 0 and 2), randomized
  adapter-init/          PEFT's step-0 adapter (default init: kaiming-uniform A, zero B), r=4 q_proj+v_proj
  adapter-trained/       the same after 20 AdamW steps on the replay batch
  golden.safetensors     logits of the base with each adapter; replay batch (input_ids, labels)
  golden.json            per-step replay losses, settings
  provenance.json        package versions and seeds

Run after scripts/make_model_fixtures.py: python scripts/make_lora_fixtures.py
Needs: torch, transformers, peft, safetensors.
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

SEED = 4321
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
BASE = os.path.join(ROOT, "models", "llama")
OUT = os.path.join(ROOT, "lora")

IDS = torch.tensor(
    [[0, 17, 250, 33, 100, 7, 301, 45, 12, 99, 150, 8, 77, 260, 31, 5],
     [0, 300, 21, 9, 44, 180, 66, 210, 3, 120, 19, 290, 55, 71, 130, 40]]
)


def base():
    m = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def randomize_b(model, scale=0.3):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(scale * torch.randn_like(p))


def save(model, name):
    d = os.path.join(OUT, name)
    model.save_pretrained(d)
    # The path of the base is machine-specific; keep a stable, relative description.
    cfg_path = os.path.join(d, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = "tests/fixtures/models/llama"
    json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    tensors = {"input_ids": IDS.clone()}
    meta = {}

    # 1) Two adapters with non-zero B: logits with each (and merged, for the first).
    torch.manual_seed(SEED)
    m = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                          lora_dropout=0.0, task_type="CAUSAL_LM"))
    randomize_b(m)
    m.eval()
    save(m, "adapter-qv")
    with torch.no_grad():
        tensors["logits.adapter-qv"] = m(IDS).logits.contiguous()
        tensors["logits.adapter-qv.merged"] = m.merge_and_unload()(IDS).logits.contiguous()

    torch.manual_seed(SEED + 1)
    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    m = get_peft_model(base(), LoraConfig(r=2, lora_alpha=4, use_rslora=True, target_modules=all_linear,
                                          layers_to_transform=[0, 2], lora_dropout=0.0, task_type="CAUSAL_LM"))
    randomize_b(m)
    m.eval()
    save(m, "adapter-rslora")
    with torch.no_grad():
        tensors["logits.adapter-rslora"] = m(IDS).logits.contiguous()

    # 2) Replay: 20 AdamW steps from PEFT's own initial adapter.
    torch.manual_seed(SEED + 2)
    m = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          lora_dropout=0.0, task_type="CAUSAL_LM"))
    save(m, "adapter-init")
    labels = IDS.clone()
    labels[1, :5] = -100  # a masked prompt: those positions are not predicted
    tensors["labels"] = labels
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.01)
    m.train()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = m(IDS, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(float(loss))
    m.eval()
    save(m, "adapter-trained")
    meta["replay"] = {"steps": 20, "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
                      "losses": losses}

    safetensors.torch.save_file(tensors, os.path.join(OUT, "golden.safetensors"))
    json.dump(meta, open(os.path.join(OUT, "golden.json"), "w"), indent=2)
    prov = {"script": "scripts/make_lora_fixtures.py", "seed": SEED, "python": sys.version.split()[0],
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "safetensors": safetensors.__version__}
    json.dump(prov, open(os.path.join(OUT, "provenance.json"), "w"), indent=2)
    print(json.dumps(prov), losses[0], losses[-1])


if __name__ == "__main__":
    main()
