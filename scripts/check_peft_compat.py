#!/usr/bin/env python3
"""Checks that an adapter written by `lora train` loads in PEFT unchanged and gives lora's numbers.

Usage: python scripts/check_peft_compat.py RUN_DIR DATA.jsonl LORA_MEAN_LOSS
Loads the base named in RUN_DIR/adapter_config.json with transformers, the adapter with
PeftModel.from_pretrained, and prints the mean loss per predicted token over the {"text"} lines
(as `lora eval --adapter RUN_DIR --data DATA.jsonl` computes it) next to lora's figure. A run trained
with `[data] add_special_tokens` carries its grown tokenizer: the base is resized to it first
(`resize_token_embeddings`), as PEFT's documentation says to.
"""
import os
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

run, data, ours = sys.argv[1], sys.argv[2], float(sys.argv[3])
cfg = json.load(open(f"{run}/adapter_config.json"))
base = cfg["base_model_name_or_path"]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
grown = os.path.exists(f"{run}/tokenizer.json")
tok = PreTrainedTokenizerFast(tokenizer_file=f"{run if grown else base}/tokenizer.json")
if grown:
    model.resize_token_embeddings(len(tok))
model = PeftModel.from_pretrained(model, run)
model.eval()
total, count = 0.0, 0
for line in open(data):
    text = json.loads(line)["text"]
    ids = tok(text, return_tensors="pt")["input_ids"]
    if ids.shape[1] < 2:
        continue
    with torch.no_grad():
        loss = float(model(ids, labels=ids).loss)
    total += loss * (ids.shape[1] - 1)
    count += ids.shape[1] - 1
peft_loss = total / count
print(f"peft mean loss {peft_loss:.6f}, lora {ours:.6f}, |diff| {abs(peft_loss - ours):.2e}")
sys.exit(0 if abs(peft_loss - ours) < 1e-4 else 1)
