#!/usr/bin/env python3
"""LoRA+ (PEFT's `create_loraplus_optimizer`): 20 AdamW steps from the replay's initial adapter with
every B at 16 times A's learning rate, for lora's `[train] loraplus_lr_ratio` to replay.

Writes tests/fixtures/lora/loraplus/ (committed, small):
  adapter-trained/   tests/fixtures/lora/adapter-init after 20 steps on the replay batch of
                     tests/fixtures/lora/golden.safetensors (input_ids, labels): torch's AdamW, lr 1e-3,
                     loraplus_lr_ratio 16, loraplus_weight_decay 0.01 (PEFT's weight decay of both groups),
                     betas (0.9, 0.999), eps 1e-8
  golden.json        the per-step losses and the settings
  provenance.json    versions

Run after scripts/make_lora_fixtures.py: python scripts/make_loraplus_fixtures.py
Needs: torch, transformers 5.x, peft 0.21, safetensors.
"""

import json
import os
import shutil

import safetensors.torch
import torch
from peft import PeftModel
from peft.optimizers import create_loraplus_optimizer
from peft_replay import optimizer_steps, save_adapter, write_provenance
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "lora", "loraplus")
STEPS, LR, RATIO, WEIGHT_DECAY = 20, 1e-3, 16.0, 0.01


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "models", "llama"), dtype=torch.float32,
                                                attn_implementation="eager")
    model = PeftModel.from_pretrained(base, os.path.join(ROOT, "lora", "adapter-init"), is_trainable=True)
    golden = safetensors.torch.load_file(os.path.join(ROOT, "lora", "golden.safetensors"))
    ids, labels = golden["input_ids"], golden["labels"]
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
                                    loraplus_weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=1e-8)
    losses = optimizer_steps(model, ids, labels, STEPS, opt)
    save_adapter(model, os.path.join(OUT, "adapter-trained"), "tests/fixtures/models/llama")
    meta = {"replay": {"steps": STEPS, "lr": LR, "loraplus_lr_ratio": RATIO, "weight_decay": WEIGHT_DECAY,
                       "betas": [0.9, 0.999], "eps": 1e-8, "losses": losses}}
    json.dump(meta, open(os.path.join(OUT, "golden.json"), "w"), indent=2)
    write_provenance(OUT, "scripts/make_loraplus_fixtures.py")
    print(losses[0], losses[-1])


if __name__ == "__main__":
    main()
