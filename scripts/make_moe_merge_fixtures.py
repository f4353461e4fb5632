#!/usr/bin/env python3
"""mergekit 0.1.5's merges of mixture-of-experts checkpoints, for lora's merge engine to equal.

mergekit 0.1.5 describes `qwen3_moe` and `mixtral` with transformers 5's in-memory names: the experts
fused (`mlp.experts.gate_up_proj [E, 2I, H]`, `mlp.experts.down_proj [E, H, I]`) and the router
`mlp.gate.weight` (Mixtral's too), and reads only checkpoints stored so. The fixtures are therefore
stored fused; merged tensor by tensor, every expert of a model meets the same expert of the others
(index with index).

Writes tests/fixtures/merge/moe/ (committed, tiny):
  <arch>/base, <arch>/ft1, <arch>/ft2
                         for arch in qwen3_moe, mixtral: a tiny random model (hidden 16, 2 layers,
                         4 experts of 8, top 2, vocab 64, f32), fused as above, and two "fine-tunes"
                         (base + seeded Gaussian noise)
  configs/<method>.toml  lora's TOML (mergekit's keys): linear, ties (a weight filtered on `mlp`),
                         slerp (t filtered on `mlp.experts`)
  expected/<arch>-<method>.safetensors
                         mergekit-yaml's output for each, run with the same configuration as YAML
  provenance.json        versions and seeds

Run: python scripts/make_moe_merge_fixtures.py
Needs: torch, transformers 5.24, mergekit 0.1.5, safetensors, pyyaml.
"""

import json
import os
import shutil
import sys
import tempfile

import mergekit
import safetensors.torch
import torch
import transformers
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen3MoeConfig

sys.path.insert(0, os.path.dirname(__file__))
from make_merge_fixtures import finetune, run_mergekit, toml_to_yaml  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests/fixtures/merge/moe")
SEED = 8765

CONFIGS = {
    "linear": """merge_method = "linear"
dtype = "float32"
[[models]]
model = "base"
parameters = { weight = 0.2 }
[[models]]
model = "ft1"
parameters = { weight = 0.5 }
[[models]]
model = "ft2"
parameters = { weight = 0.3 }
""",
    "ties": """merge_method = "ties"
base_model = "base"
dtype = "float32"
[[models]]
model = "ft1"
parameters = { weight = [{ filter = "mlp", value = 0.8 }, { value = 0.4 }], density = 0.5 }
[[models]]
model = "ft2"
parameters = { weight = 0.6, density = 0.7 }
""",
    "slerp": """merge_method = "slerp"
base_model = "base"
dtype = "float32"
[parameters]
t = [{ filter = "mlp.experts", value = [0.2, 0.7] }, { value = 0.4 }]
[[models]]
model = "base"
[[models]]
model = "ft1"
""",
}


def common():
    return dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                max_position_embeddings=64, tie_word_embeddings=False, initializer_range=0.2,
                num_experts_per_tok=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def fused(sd, block, names):
    """A transformers-5 per-expert state dict with its experts fused under mergekit's names."""
    out = {}
    layers = sorted({k.split(f".{block}.")[0] for k in sd if f".{block}.experts." in k})
    for k, v in sd.items():
        if f".{block}.experts." not in k:
            out[k.replace(f".{block}.gate.", ".mlp.gate.")] = v
    g, u, d = names
    for layer in layers:
        n = 1 + max(int(k.split(f".{block}.experts.")[1].split(".")[0]) for k in sd if k.startswith(f"{layer}.{block}.experts."))
        e = lambda i, p: sd[f"{layer}.{block}.experts.{i}.{p}.weight"]  # noqa: E731
        out[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat([e(i, g), e(i, u)]) for i in range(n)])
        out[f"{layer}.mlp.experts.down_proj"] = torch.stack([e(i, d) for i in range(n)])
    return {k: v.contiguous() for k, v in out.items()}


def tiny(arch, path, seed):
    torch.manual_seed(seed)
    if arch == "qwen3_moe":
        cfg = Qwen3MoeConfig(**common(), head_dim=8, intermediate_size=24, moe_intermediate_size=8, num_experts=4,
                             norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
        block, names = "mlp", ("gate_proj", "up_proj", "down_proj")
    else:
        cfg = MixtralConfig(**common(), intermediate_size=8, num_local_experts=4)
        block, names = "block_sparse_moe", ("w1", "w3", "w2")
    model = AutoModelForCausalLM.from_config(cfg).to(torch.float32)
    model.save_pretrained(path)
    st = os.path.join(path, "model.safetensors")
    sd = safetensors.torch.load_file(st)
    assert any(".experts.0." in k for k in sd), f"{arch}: transformers no longer saves experts one by one"
    safetensors.torch.save_file(fused(sd, block, names), st, metadata={"format": "pt"})


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "configs"))
    os.makedirs(os.path.join(OUT, "expected"))
    for name, text in CONFIGS.items():
        with open(os.path.join(OUT, "configs", f"{name}.toml"), "w") as f:
            f.write(text)
    for a, arch in enumerate(["qwen3_moe", "mixtral"]):
        d = os.path.join(OUT, arch)
        tiny(arch, os.path.join(d, "base"), SEED + 10 * a)
        for i, ft in enumerate(["ft1", "ft2"]):
            finetune(os.path.join(d, "base"), os.path.join(d, ft), SEED + 10 * a + 1 + i, 0.05)
        for name, text in CONFIGS.items():
            with tempfile.TemporaryDirectory() as tmp:
                sd = run_mergekit(toml_to_yaml(text, d), tmp, os.path.join(tmp, "out"))
            assert any(k.endswith("mlp.experts.gate_up_proj") for k in sd), f"{arch}/{name}: no fused experts"
            safetensors.torch.save_file(sd, os.path.join(OUT, "expected", f"{arch}-{name}.safetensors"))
    prov = {"script": "scripts/make_moe_merge_fixtures.py", "seed": SEED, "python": sys.version.split()[0],
            "torch": torch.__version__, "transformers": transformers.__version__,
            "mergekit": getattr(mergekit, "__version__", "0.1.5")}
    with open(os.path.join(OUT, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)


if __name__ == "__main__":
    main()
