#!/usr/bin/env python3
"""Golden fixtures for the mixture-of-experts architectures (`qwen3_moe`, `mixtral`), run by
transformers' eager expert loop.

Writes, beside the fixtures of make_model_fixtures.py (whose tokenizer and golden format it reuses):
  models/qwen3_moe/       5 experts, top 3, norm_topk_prob, layer 2 dense (`mlp_only_layers`)
  models/qwen3_moe-k1/    7 experts, top 1, no renormalisation, every 2nd layer sparse
                          (`decoder_sparse_step` 2), tied embeddings
  models/qwen3_5_moe/     Qwen3.5's hybrid layers (Gated DeltaNet, gated attention), 6 experts top 2 and a
                          gated shared expert in every layer (`Qwen3_5MoeForCausalLM`)
  models/qwen3_5_moe-hub/ the same as the Hub ships Qwen3.5/3.6-35B-A3B: `Qwen3_5MoeForConditionalGeneration`
                          (text under `model.language_model`, a tiny vision tower, an `mtp.*` tensor),
                          experts fused on disk (`mlp.experts.gate_up_proj [E, 2I, H]`, `down_proj
                          [E, H, I]`), tied embeddings
  models/mixtral/         3 experts, top 2 (on disk as Mixtral has it: `block_sparse_moe.gate`,
                          `block_sparse_moe.experts.E.w1/w3/w2`)
  golden/<name>.safetensors + .json
                          left-padded batch logits and hidden states, greedy generations, eval loss
                          (make_model_fixtures.py's goldens), and `min_router_gap`: the smallest gap,
                          over every token of the goldens, between the k-th and (k+1)-th router logit
                          (a near-tie would make the experts chosen fragile; the script refuses one)

transformers 5 saves experts per expert (its conversion mapping reverses the in-memory fusion); the
script checks that the folders hold that layout.

Run: python scripts/make_moe_fixtures.py [--out tests/fixtures]
Needs: torch, transformers 5.x, safetensors.
"""

import argparse
import json
import os
import shutil
import sys

import safetensors
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen3MoeConfig
from transformers.models.qwen3_5_moe import Qwen3_5MoeTextConfig

sys.path.insert(0, os.path.dirname(__file__))
from make_model_fixtures import SEED, VOCAB, fixture_tokenizer, goldens, provenance, randomize  # noqa: E402
from make_qwen3_5_fixtures import randomize_gdn, text_config  # noqa: E402


def base(ids, **over):
    c = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|pad|>"],
    )
    c.update(over)
    return c


def specs(ids):
    rope = {"rope_type": "default", "rope_theta": 1000000.0}
    return {
        "qwen3_moe": Qwen3MoeConfig(**base(ids), head_dim=8, intermediate_size=40, moe_intermediate_size=24,
                                    num_experts=5, num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=1,
                                    mlp_only_layers=[2], rope_parameters=rope),
        "qwen3_moe-k1": Qwen3MoeConfig(**base(ids, tie_word_embeddings=True), head_dim=8, intermediate_size=40,
                                       moe_intermediate_size=20, num_experts=7, num_experts_per_tok=1,
                                       norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[],
                                       rope_parameters=rope),
        "mixtral": MixtralConfig(**base(ids, num_hidden_layers=3), intermediate_size=28, num_local_experts=3,
                                 num_experts_per_tok=2, rope_parameters=rope),
        # Qwen3.5's Gated DeltaNet and gated attention layers (make_qwen3_5_fixtures.py's odd shapes),
        # each with 6 routed experts (top 2, always renormalised) and a gated shared expert.
        "qwen3_5_moe": Qwen3_5MoeTextConfig(**{k: v for k, v in text_config(ids).items() if k != "intermediate_size"},
                                            moe_intermediate_size=20, shared_expert_intermediate_size=36,
                                            num_experts=6, num_experts_per_tok=2),
    }


def randomize_moe(model):
    """Norms and biases as make_model_fixtures.py; routers spread enough that each token prefers some
    experts, not so much that the softmax saturates (every chosen expert's weight should count)."""
    if "Qwen3_5" in type(model).__name__:
        randomize_gdn(model)
    else:
        randomize(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight") or name.endswith("shared_expert_gate.weight"):
                p.copy_(0.25 * torch.randn_like(p))


class RouterGap:
    """Forward hooks on the routers: the smallest gap between the k-th and (k+1)-th router logit
    (the log-probability ratio, which decides the choice whatever the scale of the probabilities)."""

    def __init__(self, model):
        self.gap = float("inf")
        for name, m in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(m, "top_k"):
                m.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        x = inputs[0].detach().reshape(-1, module.weight.shape[1])
        logits = torch.nn.functional.linear(x, module.weight.detach()).float()
        # Rows of a zero input (the padding positions of a Gated DeltaNet model, zeroed by its mask)
        # tie every expert; nothing real reads them.
        logits = logits[(logits.max(-1).values - logits.min(-1).values) > 1e-6]
        if module.top_k < logits.shape[-1] and logits.shape[0] > 0:
            top = logits.topk(module.top_k + 1, dim=-1).values
            self.gap = min(self.gap, float((top[:, -2] - top[:, -1]).min()))


def check_layout(model_dir, name):
    with safetensors.safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    suffix = ".block_sparse_moe.experts.0.w1.weight" if name == "mixtral" else ".mlp.experts.0.gate_proj.weight"
    assert any(k.endswith(suffix) for k in keys), f"{name}: no per-expert *{suffix}: {sorted(keys)[:12]}"
    return keys


def fuse_experts(model_dir):
    """Rewrites a per-expert checkpoint (transformers 5 saves Qwen3.5-MoE so) with its experts fused, as
    the Hub's Qwen3.5-MoE files have them, and adds an mtp tensor as they carry."""
    path = os.path.join(model_dir, "model.safetensors")
    t = safetensors.torch.load_file(path)
    layers = sorted({k.split(".mlp.experts.")[0] for k in t if ".mlp.experts." in k})
    for layer in layers:
        n = 1 + max(int(k.split(".mlp.experts.")[1].split(".")[0]) for k in t if k.startswith(layer + ".mlp.experts."))
        gu = [torch.cat([t.pop(f"{layer}.mlp.experts.{e}.gate_proj.weight"),
                         t.pop(f"{layer}.mlp.experts.{e}.up_proj.weight")]) for e in range(n)]
        dn = [t.pop(f"{layer}.mlp.experts.{e}.down_proj.weight") for e in range(n)]
        t[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack(gu).contiguous()
        t[f"{layer}.mlp.experts.down_proj"] = torch.stack(dn).contiguous()
    t["mtp.fc.weight"] = torch.randn(32, 64)
    safetensors.torch.save_file(t, path, metadata={"format": "pt"})


def hub_form(ids, out, tok_dir, hf_tok, golden_dir, prov):
    """Qwen3.5-MoE as the Hub has it; its goldens come from transformers reading the fused folder."""
    from transformers.models.qwen3_5_moe import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    tc = {k: v for k, v in text_config(ids, tie_word_embeddings=True).items() if k != "intermediate_size"}
    tc["rope_parameters"].update({"mrope_interleaved": True, "mrope_section": [2, 1, 1]})
    tc.update(moe_intermediate_size=20, shared_expert_intermediate_size=36, num_experts=6, num_experts_per_tok=2)
    vision = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, patch_size=4, temporal_patch_size=2,
                  spatial_merge_size=2, out_hidden_size=32, num_position_embeddings=16)
    cfg = Qwen3_5MoeConfig(text_config=tc, vision_config=vision, tie_word_embeddings=True)
    for attempt in range(100):
        seed = SEED + 300 + attempt
        torch.manual_seed(seed)
        model = Qwen3_5MoeForConditionalGeneration(cfg).to(torch.float32)
        model.config._attn_implementation = "eager"
        randomize_moe(model)
        model.eval()
        model_dir = os.path.join(out, "models", "qwen3_5_moe-hub")
        shutil.rmtree(model_dir, ignore_errors=True)
        model.save_pretrained(model_dir)
        model.generation_config.save_pretrained(model_dir)
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(os.path.join(tok_dir, f), model_dir)
        fuse_experts(model_dir)
        model = Qwen3_5MoeForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager",
                                                                   dtype=torch.float32)
        model.eval()
        gap = RouterGap(model)
        try:
            goldens(model, hf_tok, "qwen3_5_moe-hub", golden_dir)
        except AssertionError as e:
            print("retry:", e)
            continue
        if gap.gap > 1e-3:
            break
    else:
        raise SystemExit("qwen3_5_moe-hub: every seed tried has a near-tie")
    with safetensors.safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        assert any(k.endswith("mlp.experts.gate_up_proj") for k in f.keys()), "experts not fused"
    meta_path = os.path.join(golden_dir, "qwen3_5_moe-hub.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["min_router_gap"] = gap.gap
    meta["provenance"] = {**prov, "seed": seed}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    print("qwen3_5_moe-hub seed", seed, "min router gap", gap.gap)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    tok_dir = os.path.join(out, "tokenizer")
    hf_tok = fixture_tokenizer(tok_dir)
    ids = {s: hf_tok.convert_tokens_to_ids(s) for s in ["<|begin_of_text|>", "<|im_end|>", "<|pad|>"]}
    golden_dir = os.path.join(out, "golden")
    prov = provenance("scripts/make_moe_fixtures.py", experts_implementation="eager")
    for i, (name, cfg) in enumerate(specs(ids).items()):
        # The first seed whose goldens have no router near-tie.
        for attempt in range(100):
            seed = SEED + 200 + 100 * i + attempt
            gap = build(name, cfg, seed, out, tok_dir, hf_tok, golden_dir)
            if gap > 1e-3:
                break
        else:
            raise SystemExit(f"{name}: every seed tried has a router near-tie")
        meta_path = os.path.join(golden_dir, f"{name}.json")
        with open(meta_path) as f:
            meta = json.load(f)
        meta["min_router_gap"] = gap
        meta["provenance"] = {**prov, "seed": seed}
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2)
        print(name, "seed", seed, "min router gap", gap)
    hub_form(ids, out, tok_dir, hf_tok, golden_dir, prov)


def build(name, cfg, seed, out, tok_dir, hf_tok, golden_dir):
    """The model of `cfg` from `seed`, saved with its goldens; the goldens' smallest router gap."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    randomize_moe(model)
    model.eval()
    model_dir = os.path.join(out, "models", name)
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save_pretrained(model_dir)
    model.generation_config.save_pretrained(model_dir)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tok_dir, f), model_dir)
    check_layout(model_dir, name)
    # Reloaded from the folder: the goldens are of what the files hold.
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    gap = RouterGap(model)
    try:
        goldens(model, hf_tok, name, golden_dir)
    except AssertionError as e:  # a greedy near-tie: the next seed
        print("retry:", e)
        return 0.0
    return gap.gap

if __name__ == "__main__":
    main()
