#!/usr/bin/env python3
"""bitsandbytes 4-bit checkpoints as transformers writes them, from the tiny Llama fixture.

Writes (committed, small):
  tests/fixtures/models/llama-bnb4/      save_pretrained of tests/fixtures/models/llama loaded with
  tests/fixtures/models/llama-bnb4-dq/   BitsAndBytesConfig(load_in_4bit, nf4, compute f32), without and
                                         with double quantization; the tokenizer files copied beside
  tests/fixtures/models/qwen3_5-hub-bnb4/  the same of the Qwen3.5 Hub-form fixture, double-quantized:
                                         transformers quantizes the vision tower's linears too and drops mtp.*
  tests/fixtures/golden/llama-bnb4.safetensors
      input_ids and, per folder, the logits of an f32 Llama whose linear weights are the 4-bit weights
      dequantized in torch (code[index] · absmax; with double quantization absmax = dynamic[q] · nested
      + offset), not bitsandbytes' CPU 4-bit matmul, which drifts on AVX-512 machines
  tests/fixtures/golden/llama-bnb4.json  provenance (versions)

Run: python scripts/make_bnb4bit_fixtures.py   (torch, transformers 5.24, bitsandbytes 0.50.2)
"""

import json
import os
import shutil
import sys

import bitsandbytes
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

sys.path.insert(0, os.path.dirname(__file__))
from make_model_fixtures import provenance  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SRC = os.path.join(ROOT, "models", "llama")
IDS = [[1, 17, 250, 33, 90, 12, 7, 301, 44, 5]]


def dequantize(tensors, name):
    """The 4-bit weight `name` of a saved state dict, dequantized in torch."""
    state = json.loads(bytes(tensors[f"{name}.quant_state.bitsandbytes__nf4"].tolist()))
    packed = tensors[name].flatten()
    idx = torch.stack([packed >> 4, packed & 15], 1).flatten().long()
    n = 1
    for s in state["shape"]:
        n *= s
    codes = tensors[f"{name}.quant_map"][idx[:n]]
    absmax = tensors[f"{name}.absmax"]
    if "nested_offset" in state:
        nested = tensors[f"{name}.nested_absmax"]
        dyn = tensors[f"{name}.nested_quant_map"]
        blocks = torch.arange(absmax.numel()) // state["nested_blocksize"]
        absmax = dyn[absmax.long()] * nested[blocks] + state["nested_offset"]
    scale = absmax.float().repeat_interleave(64)[:n]
    return (codes * scale).reshape(state["shape"])


def main():
    golden = {"input_ids": torch.tensor(IDS)}
    for name, dq in [("llama-bnb4", False), ("llama-bnb4-dq", True)]:
        out = os.path.join(ROOT, "models", name)
        shutil.rmtree(out, ignore_errors=True)
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=dq,
                                 bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(SRC, quantization_config=cfg, device_map="cpu",
                                                     dtype=torch.float32)
        model.save_pretrained(out)
        for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
            if os.path.exists(os.path.join(SRC, f)):
                shutil.copy(os.path.join(SRC, f), out)
        saved = safetensors.torch.load_file(os.path.join(out, "model.safetensors"))
        dense = AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            sd = dense.state_dict()
            for key in saved:
                if key.endswith(".quant_state.bitsandbytes__nf4"):
                    w = key[: -len(".quant_state.bitsandbytes__nf4")]
                    sd[w].copy_(dequantize(saved, w))
            golden[f"{name}.logits"] = dense(torch.tensor(IDS)).logits.contiguous()
    # The Qwen3.5 Hub form (no logits here: the test compares with lora's own NF4 of the source folder).
    out = os.path.join(ROOT, "models", "qwen3_5-hub-bnb4")
    shutil.rmtree(out, ignore_errors=True)
    from transformers.models.qwen3_5 import Qwen3_5ForConditionalGeneration

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    src = os.path.join(ROOT, "models", "qwen3_5-hub")
    model = Qwen3_5ForConditionalGeneration.from_pretrained(src, quantization_config=cfg, device_map="cpu",
                                                            dtype=torch.float32)
    model.save_pretrained(out)
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        shutil.copy(os.path.join(src, f), out)
    safetensors.torch.save_file(golden, os.path.join(ROOT, "golden", "llama-bnb4.safetensors"))
    with open(os.path.join(ROOT, "golden", "llama-bnb4.json"), "w") as f:
        json.dump(provenance("scripts/make_bnb4bit_fixtures.py", bitsandbytes=bitsandbytes.__version__), f, indent=2)


if __name__ == "__main__":
    main()
