#!/usr/bin/env python3
"""New special tokens trained as PEFT documents it: the tokenizer grows (`add_special_tokens`), the model
with it (`resize_token_embeddings`), and the new rows are trainable tokens beside the LoRA; a 10-step
replay on a tied and an untied model, for lora to load (growing the base) and replay.

Writes tests/fixtures/lora/added-<model>/ for model in llama-tied, llama (committed, small):
  golden.safetensors  the batch (input_ids, labels): two lines with the new tokens, tokenized by the
                      grown tokenizer, cut to the shorter's length
  adapter-init/       LoRA r 4, alpha 8 on q_proj and v_proj (B drawn 0.1·N(0, 1), seeded) with the new
                      tokens' rows trainable (the embedding's; on the untied model the head's too, PEFT's
                      {"embed_tokens": [...], "lm_head": [...]}), and the grown tokenizer.json /
                      tokenizer_config.json beside it
  adapter-trained/    after 10 AdamW steps (lr 1e-3, weight decay 0.01, betas (0.9, 0.999), eps 1e-8)
  golden.json         the per-step losses, the new tokens and their ids, the base model
  provenance.json     versions and seed

Run: python scripts/make_added_tokens_fixtures.py
Needs: torch, transformers 5.x, peft 0.21, safetensors.
"""

import json
import os
import shutil

import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft_replay import adamw_steps, replay_meta, save_adapter, write_provenance
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
STEPS, LR, WEIGHT_DECAY, SEED = 10, 1e-3, 0.01, 8642
NEW = ["<|tool_call|>", "<|tool_result|>"]
LINES = ["the sum is <|tool_call|>add(2, 2)<|tool_result|>4 so four",
         "hello <|tool_call|>time()<|tool_result|>noon and good day"]


def save(model, d, name):
    save_adapter(model, d, f"tests/fixtures/models/{name}")


def main():
    for name in ["llama-tied", "llama"]:
        out = os.path.join(ROOT, "lora", f"added-{name}")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        base_dir = os.path.join(ROOT, "models", name)
        tok = AutoTokenizer.from_pretrained(base_dir)
        assert all(t not in tok.get_vocab() for t in NEW), "the tokens must be new"
        tok.add_special_tokens({"additional_special_tokens": NEW})
        new_ids = tok.convert_tokens_to_ids(NEW)
        # Rows of one length (the shorter line's), so that no padding is needed.
        rows = tok(LINES)["input_ids"]
        length = min(len(r) for r in rows)
        ids = torch.tensor([r[:length] for r in rows])
        labels = ids.clone()
        assert all(i in ids.flatten().tolist() for i in new_ids), (new_ids, ids)
        safetensors.torch.save_file({"input_ids": ids.contiguous(), "labels": labels.contiguous()},
                                    os.path.join(out, "golden.safetensors"))

        def base():
            m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
            m.resize_token_embeddings(len(tok))
            return m

        torch.manual_seed(SEED)
        indices = new_ids if name == "llama-tied" else {"embed_tokens": new_ids, "lm_head": new_ids}
        model = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj"],
                                                  trainable_token_indices=indices))
        g = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            for key, p in model.named_parameters():
                if "lora_B" in key:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        init_dir = os.path.join(out, "adapter-init")
        save(model, init_dir, name)
        tok.save_pretrained(init_dir)
        # The replay loads the base (grown again by its own resize) and the saved adapter.
        model = PeftModel.from_pretrained(base(), init_dir, is_trainable=True)
        losses = adamw_steps(model, ids, labels, STEPS, LR, WEIGHT_DECAY)
        trained_dir = os.path.join(out, "adapter-trained")
        save(model, trained_dir, name)
        tok.save_pretrained(trained_dir)
        for d in [init_dir, trained_dir]:
            for extra in ["special_tokens_map.json", "chat_template.jinja"]:
                if os.path.exists(os.path.join(d, extra)):
                    os.remove(os.path.join(d, extra))
        meta = {"replay": replay_meta(STEPS, LR, WEIGHT_DECAY, losses, base_model=f"models/{name}"),
                "new_tokens": NEW, "new_ids": new_ids, "vocab": len(tok)}
        json.dump(meta, open(os.path.join(out, "golden.json"), "w"), indent=2)
        write_provenance(out, "scripts/make_added_tokens_fixtures.py", seed=SEED)
        print(name, new_ids, len(tok), losses[0], losses[-1])


if __name__ == "__main__":
    main()
