#!/usr/bin/env python3
"""20-step PEFT AdamW replays on the MoE fixtures (tests/fixtures/models/qwen3_moe, qwen3_moe-k1 and mixtral):
with LoRA on attention (q/k/v/o_proj), the routed experts, the router and the dense layers' MLP frozen
(qwen3_moe-replay, qwen3_moe-k1-replay); and with LoRA on q/v_proj and the experts as PEFT writes it for
transformers 5 (`target_parameters` gate_up_proj and down_proj over every expert; qwen3_moe-experts-replay,
mixtral-experts-replay; qwen3_5_moe-experts-replay, where gate/up/down_proj also name the shared expert's
linear layers).
The loss still depends on the adapters through the routing weights (the router's softmax of the
adapted hidden states), so the replay checks that gradient too.

Writes tests/fixtures/<model>-replay/ (committed, small), as make_qwen3_5_replay_fixtures.py does:
  adapter-init/        PEFT's step-0 adapter (default init), r=4, alpha=8
  adapter-trained/     the same after 20 AdamW steps (lr 1e-3, weight decay 0.01, no clipping)
  golden.safetensors   the replay batch: input_ids [2, 32], labels (row 1's first 7 positions masked)
  golden.json          per-step losses, the optimizer's settings, the base, and the smallest gap between
                       the k-th and (k+1)-th router logit over every token and step (seeds with a
                       near-tie are skipped: a flipped choice would make the replay fragile)
  merged-experts.safetensors
                       (expert runs) PEFT's merge_and_unload of the trained adapter, the expert tensors as
                       transformers saves them
  provenance.json      package versions and the seed

Run after scripts/make_moe_fixtures.py: python scripts/make_moe_replay_fixtures.py
Needs: torch, transformers 5.x, peft, safetensors.
"""

import json
import os
import shutil
import sys

import peft
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from make_model_fixtures import provenance, save_peft_adapter  # noqa: E402
from make_moe_fixtures import RouterGap  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
# Attention only: PEFT (>= 0.19) turns gate/up/down_proj on a transformers-5 MoE model into
# target_parameters on the fused experts, which is the next part of lora's MoE work.
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# The expert runs: PEFT (>= 0.19) converts gate/up/down_proj on transformers 5's experts into
# target_parameters gate_up_proj (rank 2r, alpha 2α) and down_proj, over every expert.
EXPERT_TARGETS = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
# Mixtral's experts under its own (v4) names.
MIXTRAL_EXPERT_TARGETS = ["q_proj", "v_proj", "w1", "w3", "w2"]
# PEFT does not convert Qwen3.5-MoE's names: gate/up/down_proj reach its shared expert, and the routed
# experts are named as target_parameters, here with the rank and alpha lora gives gate_up_proj.
QWEN3_5_MOE_EXPERTS = dict(target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                           rank_pattern={r".*\.gate_up_proj": 8}, alpha_pattern={r".*\.gate_up_proj": 16})
STEPS, LR, WEIGHT_DECAY = 20, 1e-3, 0.01
TOKENS = 32


def run(name, seed, targets=TARGETS, out_name=None, extra=None):
    base_dir = os.path.join(ROOT, "models", name)
    out = os.path.join(ROOT, out_name or f"{name}-replay")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    g = torch.Generator().manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    ids = torch.randint(5, base.config.vocab_size, (2, TOKENS), generator=g)
    ids[:, 0] = base.config.bos_token_id
    labels = ids.clone()
    labels[1, :7] = -100  # a masked prompt
    torch.manual_seed(seed)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, **(extra or {})))
    # PEFT's default B = 0 leaves the first step's routing equal to the base's; from then on the
    # adapters move the router's inputs.
    save_peft_adapter(model, os.path.join(out, "adapter-init"), f"tests/fixtures/models/{name}")
    gap = RouterGap(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=WEIGHT_DECAY)
    model.train()
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval()
    with torch.no_grad():
        model(ids)  # the trained adapter's routing too
    save_peft_adapter(model, os.path.join(out, "adapter-trained"), f"tests/fixtures/models/{name}")
    if targets != TARGETS:
        # PEFT's own fold of the trained adapter, saved as transformers saves the model (experts one by
        # one): the merged expert tensors, for `lora merge` to equal.
        merged_dir = os.path.join("/tmp", f"moe-replay-merged-{name}")
        shutil.rmtree(merged_dir, ignore_errors=True)
        model.merge_and_unload().save_pretrained(merged_dir)
        merged = safetensors.torch.load_file(os.path.join(merged_dir, "model.safetensors"))
        experts = {k: v.contiguous() for k, v in merged.items() if ".experts." in k}
        safetensors.torch.save_file(experts, os.path.join(out, "merged-experts.safetensors"))
    safetensors.torch.save_file({"input_ids": ids.contiguous(), "labels": labels.contiguous()},
                                os.path.join(out, "golden.safetensors"))
    meta = {"replay": {"steps": STEPS, "lr": LR, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": WEIGHT_DECAY,
                       "targets": targets, "losses": losses, "base_model": f"models/{name}",
                       "min_router_gap": gap.gap}}
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2)
    prov = {**provenance("scripts/make_moe_replay_fixtures.py"), "seed": seed, "peft": peft.__version__}
    with open(os.path.join(out, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)
    return gap.gap, losses


def main():
    runs = [("qwen3_moe", TARGETS, None, None), ("qwen3_moe-k1", TARGETS, None, None),
            ("qwen3_moe", EXPERT_TARGETS, "qwen3_moe-experts-replay", None),
            ("mixtral", MIXTRAL_EXPERT_TARGETS, "mixtral-experts-replay", None),
            ("qwen3_5_moe", EXPERT_TARGETS, "qwen3_5_moe-experts-replay", QWEN3_5_MOE_EXPERTS)]
    for i, (name, targets, out_name, extra) in enumerate(runs):
        for attempt in range(50):
            seed = 6100 + 100 * i + attempt
            gap, losses = run(name, seed, targets, out_name, extra)
            if gap > 1e-4:
                break
        else:
            raise SystemExit(f"{name}: every seed tried has a router near-tie")
        print(name, "seed", seed, "min router gap", gap, "loss", losses[0], "->", losses[-1])


if __name__ == "__main__":
    main()
