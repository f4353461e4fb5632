#!/usr/bin/env python3
"""PiSSA and OLoRA (PEFT's `init_lora_weights="pissa"` / `"olora"`): the initial factors, the residual
base, a 10-step training replay and the adapter converted to the original base, for lora's
`[lora] init = "pissa" | "olora"` to equal.

Writes tests/fixtures/lora/pissa/<init>/ for init in pissa, olora (committed, small):
  initial.safetensors    PEFT's A₀, B₀ (`<module>.lora_A`, `<module>.lora_B`) and the residual base weight
                         (`<module>.weight`) of every adapted module of tests/fixtures/models/llama
                         (r 4, alpha 8, q_proj and v_proj); the residual model's logits on the replay
                         batch (`logits`), which equal the original base's
  adapter-converted/     after 10 AdamW steps on the replay batch of tests/fixtures/lora/golden.safetensors
                         (lr 1e-3, weight decay 0.01, betas (0.9, 0.999), eps 1e-8), saved with
                         `path_initial_model_for_weight_conversion`: the rank-2r plain LoRA for the
                         original base
  golden.json            the per-step losses, and the logits of the original base with the converted
                         adapter are in trained.safetensors (`logits`)
  provenance.json        versions

Run after scripts/make_lora_fixtures.py: python scripts/make_pissa_fixtures.py
Needs: torch, transformers 5.x, peft 0.21, safetensors.
"""

import json
import os
import shutil
import tempfile

import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft_replay import adamw_steps, replay_meta, save_adapter, write_provenance
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "lora", "pissa")
STEPS, LR, WEIGHT_DECAY = 10, 1e-3, 0.01


def base():
    return AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "models", "llama"), dtype=torch.float32,
                                                attn_implementation="eager")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    golden = safetensors.torch.load_file(os.path.join(ROOT, "lora", "golden.safetensors"))
    ids, labels = golden["input_ids"], golden["labels"]
    for init in ["pissa", "olora"]:
        out = os.path.join(OUT, init)
        os.makedirs(out)
        model = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=init,
                                                  target_modules=["q_proj", "v_proj"]))
        tensors = {}
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                path = name.removeprefix("base_model.model.")
                tensors[f"{path}.lora_A"] = module.lora_A["default"].weight.detach().clone()
                tensors[f"{path}.lora_B"] = module.lora_B["default"].weight.detach().clone()
                tensors[f"{path}.weight"] = module.get_base_layer().weight.detach().clone()
        with torch.no_grad():
            tensors["logits"] = model(ids).logits.float()
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()},
                                    os.path.join(out, "initial.safetensors"))
        with tempfile.TemporaryDirectory() as tmp:
            initial_dir = os.path.join(tmp, "initial")
            # PEFT's recipe: the initial adapter saved as it is (init_lora_weights kept), for the conversion.
            model.peft_config["default"].init_lora_weights = True
            model.save_pretrained(initial_dir)
            model.peft_config["default"].init_lora_weights = init
            losses = adamw_steps(model, ids, labels, STEPS, LR, WEIGHT_DECAY)
            d = os.path.join(out, "adapter-converted")
            cfg = save_adapter(model, d, "tests/fixtures/models/llama",
                               path_initial_model_for_weight_conversion=initial_dir)
        # The converted adapter on the original base gives the trained model's logits.
        converted = PeftModel.from_pretrained(base(), d)
        with torch.no_grad():
            trained_logits = model(ids).logits.float()
            logits = converted(ids).logits.float()
        assert (logits - trained_logits).abs().max() < 1e-4, (logits - trained_logits).abs().max()
        safetensors.torch.save_file({"logits": logits.contiguous()}, os.path.join(out, "trained.safetensors"))
        meta = {"replay": replay_meta(STEPS, LR, WEIGHT_DECAY, losses), "init": init, "r": 4, "alpha": 8}
        json.dump(meta, open(os.path.join(out, "golden.json"), "w"), indent=2)
        print(init, losses[0], losses[-1], cfg["r"], cfg["lora_alpha"])
    write_provenance(OUT, "scripts/make_pissa_fixtures.py")


if __name__ == "__main__":
    main()
