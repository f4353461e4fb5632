#!/usr/bin/env python3
"""Inputs of scripts/bench_merge.sh: a ~500M-parameter fp16 Llama-shaped random model, two
"fine-tuned" variants of it, a rank-16 LoRA adapter, and the merge configurations (TOML for lora,
YAML for mergekit).

Run: python scripts/bench_merge.py OUTDIR    (needs torch and safetensors; ~3.1 GB written)
"""

import json
import os
import sys

import safetensors.torch
import torch

HIDDEN, HEADS, KV, INTER, VOCAB = 1536, 12, 4, 4096, 32000
# BENCH_LAYERS changes the depth only, to show that peak memory does not grow with it.
LAYERS = int(os.environ.get("BENCH_LAYERS", "16"))
HEAD_DIM = HIDDEN // HEADS
RANK = 16


def shapes():
    s = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = (HIDDEN,)
        s[p + "post_attention_layernorm.weight"] = (HIDDEN,)
        s[p + "self_attn.q_proj.weight"] = (HEADS * HEAD_DIM, HIDDEN)
        s[p + "self_attn.k_proj.weight"] = (KV * HEAD_DIM, HIDDEN)
        s[p + "self_attn.v_proj.weight"] = (KV * HEAD_DIM, HIDDEN)
        s[p + "self_attn.o_proj.weight"] = (HIDDEN, HEADS * HEAD_DIM)
        s[p + "mlp.gate_proj.weight"] = (INTER, HIDDEN)
        s[p + "mlp.up_proj.weight"] = (INTER, HIDDEN)
        s[p + "mlp.down_proj.weight"] = (HIDDEN, INTER)
    return s


def config():
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def save(folder, tensors):
    os.makedirs(folder, exist_ok=True)
    safetensors.torch.save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config(), f, indent=2)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    base = {k: (torch.randn(v) * 0.02).half() for k, v in shapes().items()}
    save(os.path.join(out, "base"), base)
    for i in (1, 2):
        save(os.path.join(out, f"ft{i}"), {k: (v.float() + torch.randn(v.shape) * 0.002).half() for k, v in base.items()})
    # A rank-16 adapter on every linear module of the attention and MLP.
    ad = {}
    for k, v in shapes().items():
        if any(m in k for m in ("_proj",)):
            mod = "base_model.model." + k[: -len(".weight")]
            ad[mod + ".lora_A.weight"] = (torch.randn(RANK, v[1]) * 0.01).half()
            ad[mod + ".lora_B.weight"] = (torch.randn(v[0], RANK) * 0.01).half()
    os.makedirs(os.path.join(out, "adapter"), exist_ok=True)
    safetensors.torch.save_file(ad, os.path.join(out, "adapter/adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "adapter/adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 32,
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                   "base_model_name_or_path": os.path.join(out, "base")}, f, indent=2)
    methods = {
        "linear": ("", ["weight = 0.5", "weight = 0.5"], None),
        "task_arithmetic": ('base_model = "BASE"\n', ["weight = 0.5", "weight = 0.5"], None),
        "ties": ('base_model = "BASE"\n', ["weight = 0.5, density = 0.5", "weight = 0.5, density = 0.5"], None),
    }
    for name, (base_line, params, _) in methods.items():
        toml = f'merge_method = "{name}"\n' + base_line.replace("BASE", os.path.join(out, "base")) + 'dtype = "float16"\n'
        yml = f"merge_method: {name}\n" + (f"base_model: {os.path.join(out, 'base')}\n" if base_line else "") + "dtype: float16\nmodels:\n"
        for i, p in enumerate(params, 1):
            toml += f'[[models]]\nmodel = "{os.path.join(out, f"ft{i}")}"\nparameters = {{ {p} }}\n'
            yml += f"  - model: {os.path.join(out, f'ft{i}')}\n    parameters: {{{p.replace(' =', ':')}}}\n"
        open(os.path.join(out, f"{name}.toml"), "w").write(toml)
        open(os.path.join(out, f"{name}.yml"), "w").write(yml)
    # mergekit's adapter fold: a linear "merge" of one base+adapter model.
    open(os.path.join(out, "fold.yml"), "w").write(
        f"merge_method: linear\ndtype: float16\nmodels:\n  - model: {os.path.join(out, 'base')}+{os.path.join(out, 'adapter')}\n    parameters: {{weight: 1.0}}\n"
    )


if __name__ == "__main__":
    main()
