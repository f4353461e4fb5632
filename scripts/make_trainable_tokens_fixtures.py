#!/usr/bin/env python3
"""PEFT's trainable tokens beside LoRA (`LoraConfig(trainable_token_indices=[...])`): a 10-step replay on
an untied and a tied model, for lora's `[lora] trainable_token_indices` to equal.

Writes tests/fixtures/lora/tokens-<case>/ for case llama (untied head), llama-tied, and llama-head (the
untied head's rows of the four most frequent labels trained too, PEFT's {"embed_tokens": [...],
"lm_head": [...]} form) (committed, small):
  adapter-init/      LoRA r 4, alpha 8 on q_proj and v_proj with lora_A and lora_B of
                     tests/fixtures/lora/adapter-init where they fit (llama; llama-tied: PEFT's A, B drawn
                     0.1·N(0, 1), seeded), and the embedding rows of the batch's three most
                     frequent input ids trained (`...embed_tokens.token_adapter.trainable_tokens_delta`,
                     the rows' values, starting from the table's); on the tied model PEFT ties the head's
                     columns to them
  adapter-trained/   after 10 AdamW steps on the replay batch of tests/fixtures/lora/golden.safetensors
                     (lr 1e-3, weight decay 0.01, betas (0.9, 0.999), eps 1e-8)
  golden.json        the per-step losses, the token ids, the base model
  provenance.json    versions

Run after scripts/make_lora_fixtures.py: python scripts/make_trainable_tokens_fixtures.py
Needs: torch, transformers 5.x, peft 0.21, safetensors.
"""

import json
import os
import shutil
from collections import Counter

import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft_replay import adamw_steps, replay_meta, save_adapter, write_provenance
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
STEPS, LR, WEIGHT_DECAY, SEED = 10, 1e-3, 0.01, 4321


def base(name):
    return AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "models", name), dtype=torch.float32,
                                                attn_implementation="eager")


def save(model, d, name):
    save_adapter(model, d, f"tests/fixtures/models/{name}")


def main():
    golden = safetensors.torch.load_file(os.path.join(ROOT, "lora", "golden.safetensors"))
    ids, labels = golden["input_ids"], golden["labels"]
    tokens = sorted(t for t, _ in Counter(ids.flatten().tolist()).most_common(3))
    init = safetensors.torch.load_file(os.path.join(ROOT, "lora", "adapter-init", "adapter_model.safetensors"))
    head = sorted(t for t, _ in Counter(l for l in labels.flatten().tolist() if l >= 0).most_common(4))
    cases = [("llama", "llama", tokens), ("llama-tied", "llama-tied", tokens),
             ("llama-head", "llama", {"embed_tokens": tokens, "lm_head": head})]
    for case, name, indices in cases:
        out = os.path.join(ROOT, "lora", f"tokens-{case}")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        model = get_peft_model(base(name), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                      target_modules=["q_proj", "v_proj"],
                                                      trainable_token_indices=indices))
        g = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            for key, p in model.named_parameters():
                k = key.replace(".default", "")
                if k in init and init[k].shape == p.shape:
                    p.copy_(init[k])
                elif "lora_B" in k:
                    # adapter-init is for models/llama; elsewhere B is drawn (seeded), non-zero.
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        save(model, os.path.join(out, "adapter-init"), name)
        model = PeftModel.from_pretrained(base(name), os.path.join(out, "adapter-init"), is_trainable=True)
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        assert sum("trainable_tokens_delta" in n for n in trained) == (2 if case == "llama-head" else 1), trained
        losses = adamw_steps(model, ids, labels, STEPS, LR, WEIGHT_DECAY)
        save(model, os.path.join(out, "adapter-trained"), name)
        meta = {"replay": replay_meta(STEPS, LR, WEIGHT_DECAY, losses), "base": f"models/{name}", "tokens": indices}
        json.dump(meta, open(os.path.join(out, "golden.json"), "w"), indent=2)
        write_provenance(out, "scripts/make_trainable_tokens_fixtures.py", seed=SEED)
        print(case, indices, losses[0], losses[-1])


if __name__ == "__main__":
    main()
