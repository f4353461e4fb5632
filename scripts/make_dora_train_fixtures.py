#!/usr/bin/env python3
"""DoRA training (`use_dora=True`): 20 AdamW steps of PEFT + PyTorch from a DoRA adapter, for lora's
training with `[lora] use_dora = true` to replay step for step.

Writes tests/fixtures/lora/dora-train/ (committed, small):
  adapter-init/      a PEFT DoRA adapter for tests/fixtures/models/llama: lora_A and lora_B of
                     tests/fixtures/lora/adapter-init (r 4, alpha 8, q_proj and v_proj), each magnitude
                     PEFT's initial one for them (the row norms of W + s·B·A) times 1 + 0.1·N(0, 1) (seeded),
                     so that the magnitude's part of the update is not at its fixed point
  adapter-trained/   adapter-init after 20 steps on the replay batch of tests/fixtures/lora/golden.safetensors
                     (input_ids, labels): torch's AdamW, lr 1e-3, weight decay 0.01 on every parameter,
                     betas (0.9, 0.999), eps 1e-8
  golden.json        the per-step losses and the settings
  provenance.json    versions and seed

Run after scripts/make_lora_fixtures.py: python scripts/make_dora_train_fixtures.py
Needs: torch, transformers 5.x, peft 0.21, safetensors.
"""

import json
import os
import shutil

import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft_replay import adamw_steps, replay_meta, save_adapter, write_provenance
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "lora", "dora-train")
STEPS, LR, WEIGHT_DECAY, SEED = 20, 1e-3, 0.01, 1357


def base():
    return AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "models", "llama"), dtype=torch.float32,
                                                attn_implementation="eager")


def save(model, d):
    save_adapter(model, d, "tests/fixtures/models/llama")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    init = safetensors.torch.load_file(os.path.join(ROOT, "lora", "adapter-init", "adapter_model.safetensors"))
    model = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True,
                                              target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not hasattr(module, "lora_magnitude_vector") or "default" not in module.lora_A:
                continue
            key = f"{name}.lora_A.weight"
            module.lora_A["default"].weight.copy_(init[key])
            module.lora_B["default"].weight.copy_(init[key.replace("lora_A", "lora_B")])
            # PEFT's initial magnitude for these factors, then moved off it.
            mag = module.lora_magnitude_vector["default"]
            mag.update_layer(base_layer=module.get_base_layer(), lora_A=module.lora_A["default"].weight,
                             lora_B=module.lora_B["default"].weight, scaling=module.scaling["default"])
            mag.weight.mul_(1.0 + 0.1 * torch.randn(mag.weight.shape, generator=g))
    save(model, os.path.join(OUT, "adapter-init"))
    model = PeftModel.from_pretrained(base(), os.path.join(OUT, "adapter-init"), is_trainable=True)
    golden = safetensors.torch.load_file(os.path.join(ROOT, "lora", "golden.safetensors"))
    ids, labels = golden["input_ids"], golden["labels"]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum("lora_magnitude_vector" in n for n in names) == sum("lora_A" in n for n in names), names
    losses = adamw_steps(model, ids, labels, STEPS, LR, WEIGHT_DECAY)
    save(model, os.path.join(OUT, "adapter-trained"))
    meta = {"replay": replay_meta(STEPS, LR, WEIGHT_DECAY, losses)}
    json.dump(meta, open(os.path.join(OUT, "golden.json"), "w"), indent=2)
    write_provenance(OUT, "scripts/make_dora_train_fixtures.py", seed=SEED)
    print(losses[0], losses[-1])


if __name__ == "__main__":
    main()
