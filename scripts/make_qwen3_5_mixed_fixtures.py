#!/usr/bin/env python3
"""A Qwen3.5 Hub-form folder stored as Qwen ships it, for the lossless-fold tests: bf16 weights with f32
`A_log` and Gated DeltaNet norms (`linear_attn.norm.weight`), an `mtp.*` tensor, and the processor files
of a vision-language checkpoint beside the model; a PEFT adapter on it and what PEFT's merge_and_unload
makes of it on the same dtypes.

Writes (committed, small), from tests/fixtures/models/qwen3_5-hub (make_qwen3_5_fixtures.py):
  tests/fixtures/models/qwen3_5-hub-bf16/          the folder: config.json (dtype bfloat16),
      model.safetensors (bf16, A_log and linear_attn.norm.weight f32), generation_config.json,
      tokenizer files, chat_template.jinja, preprocessor_config.json, video_preprocessor_config.json,
      processor_config.json, LICENSE
  tests/fixtures/golden/qwen3_5-hub-bf16-adapter/  adapter_config.json, adapter_model.safetensors (r 4
      on the Gated DeltaNet projections, q_proj and down_proj, B random), merged.safetensors (the
      language-model tensors merge_and_unload changed, on the model loaded in bf16), provenance.json

Run: python scripts/make_qwen3_5_mixed_fixtures.py   (torch, transformers 5.24, peft, safetensors)
"""

import json
import os
import shutil
import sys

import peft
import safetensors.torch
import torch
from transformers.models.qwen3_5 import Qwen3_5ForConditionalGeneration

sys.path.insert(0, os.path.dirname(__file__))
from make_model_fixtures import SEED, provenance, save_peft_adapter  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SRC = os.path.join(ROOT, "models", "qwen3_5-hub")
OUT = os.path.join(ROOT, "models", "qwen3_5-hub-bf16")
ADAPTER = os.path.join(ROOT, "golden", "qwen3_5-hub-bf16-adapter")
F32_SUFFIXES = ("linear_attn.A_log", "linear_attn.norm.weight")

# Processor files as a Qwen3.5 vision-language checkpoint carries them (trimmed to their shape: the
# tests check that a fold keeps them byte for byte, not their meaning).
PROCESSOR_FILES = {
    "preprocessor_config.json": {"image_processor_type": "Qwen2VLImageProcessorFast", "patch_size": 4,
                                 "temporal_patch_size": 2, "merge_size": 2,
                                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    "video_preprocessor_config.json": {"video_processor_type": "Qwen3VLVideoProcessor", "patch_size": 4,
                                       "temporal_patch_size": 2, "merge_size": 2, "fps": 2},
    "processor_config.json": {"processor_class": "Qwen3VLProcessor"},
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_folder():
    shutil.rmtree(OUT, ignore_errors=True)
    model = Qwen3_5ForConditionalGeneration.from_pretrained(SRC, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(OUT)
    # transformers saves every tensor in bf16; Qwen's checkpoints keep these in f32.
    path = os.path.join(OUT, "model.safetensors")
    tensors = safetensors.torch.load_file(path)
    original = safetensors.torch.load_file(os.path.join(SRC, "model.safetensors"))
    for name in tensors:
        if name.endswith(F32_SUFFIXES):
            tensors[name] = original[name].to(torch.float32).contiguous()
    # The multi-token-prediction head transformers does not load, in bf16 as shipped.
    tensors["mtp.fc.weight"] = original["mtp.fc.weight"].to(torch.bfloat16).contiguous()
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    for f in ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(SRC, f), OUT)
    with open(os.path.join(OUT, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["dtype"] == "bfloat16", cfg["dtype"]
    for name, content in PROCESSOR_FILES.items():
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(content, f, indent=2, sort_keys=True)
    with open(os.path.join(OUT, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)
    with open(os.path.join(OUT, "LICENSE"), "w") as f:
        f.write("Apache License 2.0 (fixture)\n")
    kept = sorted(n for n, t in tensors.items() if t.dtype == torch.float32)
    return kept


def write_adapter():
    shutil.rmtree(ADAPTER, ignore_errors=True)
    # transformers loads the mixed folder in bf16 throughout (A_log included): PEFT's merge runs there.
    model = Qwen3_5ForConditionalGeneration.from_pretrained(OUT, dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(SEED + 202)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a",
                                                             "out_proj", "q_proj", "down_proj"])
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn_like(p))
    save_peft_adapter(pm, ADAPTER, "tests/fixtures/models/qwen3_5-hub-bf16")
    merged = pm.merge_and_unload().state_dict()
    changed = {k: v.contiguous() for k, v in merged.items() if not torch.equal(v, before[k])}
    safetensors.torch.save_file(changed, os.path.join(ADAPTER, "merged.safetensors"))
    return sorted(changed)


def main():
    kept = write_folder()
    changed = write_adapter()
    prov = provenance("scripts/make_qwen3_5_mixed_fixtures.py", peft=peft.__version__)
    prov["seed"] = SEED + 202
    prov["f32_tensors"] = kept
    prov["changed_by_merge_and_unload"] = changed
    with open(os.path.join(ADAPTER, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)
    print(json.dumps({"f32": len(kept), "changed": len(changed)}))


if __name__ == "__main__":
    main()
