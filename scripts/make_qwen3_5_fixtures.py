#!/usr/bin/env python3
"""Golden fixtures for Qwen3.5 (`qwen3_5`): the hybrid of Gated DeltaNet and gated attention layers, run by
transformers' own torch reference of the gated delta rule (flash-linear-attention and causal-conv1d are
not installed, and transformers says so on stderr).

Writes, beside the fixtures of make_model_fixtures.py (whose tokenizer it reuses):
  models/qwen3_5/         the text-only form (`Qwen3_5ForCausalLM`, `model.layers.N`), untied head
  models/qwen3_5-hub/     the form the Hub checkpoints have (`Qwen3_5ForConditionalGeneration`,
                          `model.language_model.layers.N`, a tiny vision tower under `model.visual`, an
                          `mtp.*` tensor as the released checkpoints carry), tied embeddings
  golden/qwen3_5-hub-adapter/
                          a PEFT adapter on the Hub form (GDN and attention projections), with the
                          PeftModel's logits and merge_and_unload's logits and language-model weights
  golden/qwen3_5{,-hub}.safetensors + .json
                          as make_model_fixtures.py's goldens (left-padded batch logits and hidden
                          states, greedy generations, eval loss), plus `long.*`: the logits of one
                          sequence of more than two chunks of the chunked delta rule (64 tokens each),
                          at once and as a cached prompt of 71 tokens decoded token by token

Shapes are chosen odd so that a wrong split shows: 2 key heads against 6 value heads (grouped, 3 per key
head), key width 8 against value width 12, a 3-tap convolution, a layer pattern that is not every 4th
layer, head_dim 16 with partial_rotary_factor 0.5 (8 of 16 channels rotate).

Run: python scripts/make_qwen3_5_fixtures.py [--out tests/fixtures]
Needs: torch, transformers 5.24, safetensors.
"""

import argparse
import json
import os
import shutil
import sys

import safetensors
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM
from transformers.models.qwen3_5 import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5TextConfig

sys.path.insert(0, os.path.dirname(__file__))
from make_model_fixtures import CORPUS, SEED, VOCAB, fixture_tokenizer, goldens, provenance, randomize  # noqa: E402

LONG_TOKENS = 150
# 64 + 7: the cached prompt ends inside the second chunk.
LONG_SPLIT = 71


def text_config(ids, **over):
    c = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=6,
        linear_key_head_dim=8,
        linear_value_head_dim=12,
        linear_conv_kernel_dim=3,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        initializer_range=0.2,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.5},
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|pad|>"],
    )
    c.update(over)
    return c


def randomize_gdn(model):
    """Besides the norms (zero-centred here: randomize() makes them about 1, so the weight adds ~2x),
    give the delta rule's per-head parameters values that make every path matter."""
    randomize(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(0.5, 8.0)))
            elif name.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif "norm" in name and "linear_attn.norm" not in name:
                # Zero-centred RMSNorm: the scale is 1 + weight.
                p.copy_(0.2 * torch.randn_like(p))


def long_golden(model, hf_tok, tensors):
    ids = hf_tok(CORPUS, return_tensors="pt")["input_ids"][:, :LONG_TOKENS]
    assert ids.shape[1] == LONG_TOKENS
    with torch.no_grad():
        logits = model(ids).logits
        # The first LONG_SPLIT tokens as a cached prompt (chunked), then one token at a time (the
        # recurrent form): transformers' decoding path, which differs from the whole-sequence logits
        # by its own rounding (up to ~5e-4 here).
        out = model(ids[:, :LONG_SPLIT], use_cache=True)
        cache, steps = out.past_key_values, [out.logits]
        for i in range(LONG_SPLIT, LONG_TOKENS):
            out = model(ids[:, i : i + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    tensors["long.input_ids"] = ids.to(torch.int64).contiguous()
    tensors["long.logits"] = logits.float().contiguous()
    tensors["long.decoded_logits"] = torch.cat(steps, 1).float().contiguous()


def save(model, hf_tok, tok_dir, out, name, prov):
    model_dir = os.path.join(out, "models", name)
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save_pretrained(model_dir)
    model.generation_config.save_pretrained(model_dir)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tok_dir, f), model_dir)
    return model_dir


def add_mtp_tensor(model_dir):
    """The released checkpoints carry the multi-token-prediction head (`mtp.*`), which transformers
    does not load; add one such tensor so that loaders are tested to skip it."""
    path = os.path.join(model_dir, "model.safetensors")
    tensors = safetensors.torch.load_file(path)
    tensors["mtp.fc.weight"] = torch.randn(32, 64)
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    tok_dir = os.path.join(out, "tokenizer")
    hf_tok = fixture_tokenizer(tok_dir)
    ids = {s: hf_tok.convert_tokens_to_ids(s) for s in ["<|begin_of_text|>", "<|im_end|>", "<|pad|>"]}
    golden_dir = os.path.join(out, "golden")
    prov = provenance(
        "scripts/make_qwen3_5_fixtures.py",
        delta_rule="transformers' torch reference (torch_chunk_gated_delta_rule / torch_recurrent_gated_delta_rule)",
    )

    # 1) Text-only form.
    torch.manual_seed(SEED + 100)
    cfg = Qwen3_5TextConfig(**text_config(ids))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    assert type(model).__name__ == "Qwen3_5ForCausalLM", type(model)
    randomize_gdn(model)
    model.eval()
    save(model, hf_tok, tok_dir, out, "qwen3_5", prov)
    goldens(model, hf_tok, "qwen3_5", golden_dir)
    extra = {}
    long_golden(model, hf_tok, extra)
    merge_into_golden(golden_dir, "qwen3_5", extra, prov)

    # 2) The Hub form: multimodal wrapper, text config nested, tied head, interval-based layer pattern.
    torch.manual_seed(SEED + 101)
    tc = text_config(ids, tie_word_embeddings=True, num_hidden_layers=3, full_attention_interval=3)
    del tc["layer_types"]
    # The Hub checkpoints' rope_parameters carry the multimodal rotary sections; for text they rotate
    # every axis by the same position, i.e. plain RoPE.
    tc["rope_parameters"].update({"mrope_interleaved": True, "mrope_section": [2, 1, 1]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32, num_position_embeddings=16)
    cfg = Qwen3_5Config(text_config=tc, vision_config=vision, tie_word_embeddings=True)
    model = Qwen3_5ForConditionalGeneration(cfg).to(torch.float32)
    model.config._attn_implementation = "eager"
    randomize_gdn(model)
    model.eval()
    hub_dir = save(model, hf_tok, tok_dir, out, "qwen3_5-hub", prov)
    add_mtp_tensor(hub_dir)
    # transformers writes the expanded layer_types; keep only the interval, as older checkpoints have it.
    cfg_path = os.path.join(hub_dir, "config.json")
    with open(cfg_path) as f:
        saved = json.load(f)
    assert saved["text_config"].pop("layer_types") == ["linear_attention", "linear_attention", "full_attention"]
    saved["text_config"]["full_attention_interval"] = 3
    with open(cfg_path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
    # Reload, to prove transformers reads the folder (mtp tensor included) to the same model.
    model = Qwen3_5ForConditionalGeneration.from_pretrained(hub_dir, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    goldens(model, hf_tok, "qwen3_5-hub", golden_dir)
    extra = {}
    long_golden(model, hf_tok, extra)
    merge_into_golden(golden_dir, "qwen3_5-hub", extra, prov)
    peft_adapter(model, out, prov)
    print(json.dumps(prov))


def peft_adapter(model, out, prov):
    """A PEFT adapter on the Hub form's Gated DeltaNet and attention projections (B random, so that it
    does something), saved by PEFT, with the logits of the PeftModel and of merge_and_unload."""
    import peft

    torch.manual_seed(SEED + 102)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a",
                                                             "out_proj", "q_proj", "down_proj"])
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn_like(p))
    pm.eval()
    adapter_dir = os.path.join(out, "golden", "qwen3_5-hub-adapter")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    pm.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(cfg_path) as f:
        saved = json.load(f)
    saved["base_model_name_or_path"] = "tests/fixtures/models/qwen3_5-hub"  # not this machine's path
    with open(cfg_path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
    ids = torch.tensor([[0, 17, 250, 33, 90, 12, 7, 301, 44]])
    with torch.no_grad():
        adapted = pm(ids).logits
        unloaded = pm.merge_and_unload()
        merged = unloaded(ids).logits
    # The folded language-model weights, as merge_and_unload leaves them.
    folded = {k: v.contiguous() for k, v in unloaded.state_dict().items() if k.startswith("model.language_model.")}
    safetensors.torch.save_file(folded, os.path.join(adapter_dir, "merged.safetensors"))
    prov = {**prov, "peft": peft.__version__}
    safetensors.torch.save_file({"input_ids": ids, "logits.adapted": adapted.contiguous(),
                                 "logits.merged": merged.contiguous()}, os.path.join(adapter_dir, "golden.safetensors"))
    with open(os.path.join(adapter_dir, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)


def merge_into_golden(golden_dir, name, extra, prov):
    path = os.path.join(golden_dir, f"{name}.safetensors")
    tensors = safetensors.torch.load_file(path)
    tensors.update(extra)
    safetensors.torch.save_file(tensors, path)
    meta_path = os.path.join(golden_dir, f"{name}.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["long_tokens"] = LONG_TOKENS
    meta["long_split"] = LONG_SPLIT
    meta["provenance"] = prov
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
