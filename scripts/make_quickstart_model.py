#!/usr/bin/env python3
"""The quickstart base model: a small Llama pretrained from scratch on the King James Bible.

Deterministic (fixed seeds, fixed thread count, deterministic algorithms). Writes models/quickstart/:
config.json, model.safetensors (bf16, ~11 MB), tokenizer.json (byte-level BPE trained on the corpus),
tokenizer_config.json (ChatML chat template), generation_config.json, and PROVENANCE.json.

Corpus: the KJV text of Debian's `bible-kjv` package (public domain; `apt-get install bible-kjv`,
dumped with `bible -f Gen1:1-Rev22:21`), verse references removed.

Run: python scripts/make_quickstart_model.py [--minutes 20]   (needs torch, transformers, tokenizers)
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 20261128
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "quickstart")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus():
    raw = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    verses = [re.sub(r"^\S+\d+:\d+\s+", "", line).strip() for line in raw.splitlines() if line.strip()]
    return verses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget of pretraining")
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (overrides --minutes; for exact reruns)")
    a = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    verses = corpus()
    os.makedirs(OUT, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(verses, trainer=trainer)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    json.dump({"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "padding_side": "right",
               "model_max_length": 512, "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"},
              open(os.path.join(OUT, "tokenizer_config.json"), "w"), indent=2)

    eot = tok.token_to_id("<|endoftext|>")
    # Chapters of ~8 verses as documents, separated by <|endoftext|>.
    ids = []
    for i in range(0, len(verses), 8):
        ids.extend(tok.encode(" ".join(verses[i:i + 8])).ids)
        ids.append(eot)
    data = torch.tensor(ids, dtype=torch.long)
    seq, batch = 128, 16
    n_windows = (len(data) - 1) // seq

    cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, rope_theta=10000.0, bos_token_id=tok.token_to_id("<|im_start|>"),
                      eos_token_id=tok.token_to_id("<|im_end|>"), pad_token_id=eot)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(SEED)
    budget = a.minutes * 60
    total_steps = a.steps or 100000
    warmup = 100
    start = time.time()
    step = 0
    model.train()
    log = []
    while step < total_steps:
        if not a.steps and time.time() - start > budget:
            break
        # 1) warm-up, 2) cosine decay over the planned steps (or the time budget, estimated), 3) floor 10%.
        planned = a.steps or max(step + 1, int(budget / max((time.time() - start) / max(step, 1), 1e-3)))
        lr = 3e-3 * min(1.0, (step + 1) / warmup) * max(0.1, 0.5 * (1 + math.cos(math.pi * min(1.0, step / planned))))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, n_windows, (batch,), generator=g) * seq
        x = torch.stack([data[s:s + seq] for s in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log.append((step, round(float(loss), 4)))
            print(f"step {step} loss {float(loss):.4f} lr {lr:.2e} {time.time() - start:.0f}s", flush=True)
    model.eval()
    model.to(torch.bfloat16).save_pretrained(OUT)
    model.generation_config.save_pretrained(OUT)
    prov = {"script": "scripts/make_quickstart_model.py", "seed": SEED, "steps": step, "tokens_seen": step * batch * seq,
            "corpus": "King James Bible, Debian package bible-kjv (public domain text)", "corpus_tokens": len(ids),
            "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "loss_log": log}
    json.dump(prov, open(os.path.join(OUT, "PROVENANCE.json"), "w"), indent=1)
    print(json.dumps({k: v for k, v in prov.items() if k != "loss_log"}))


if __name__ == "__main__":
    main()
