#!/usr/bin/env python3
"""GGUF fixtures for the mixture-of-experts architectures: llama.cpp's converter's files of tiny
`qwen3_moe` and Mixtral models, and llama.cpp's own run (through llama-cpp-python) of those files and of
the expert adapters lora exports for them, so that the tests can check both ways: lora writes what the
converter writes, reads what it writes as llama.cpp runs it, and its adapter files on experts (3-D
`lora_a` / `lora_b`, which `convert_lora_to_gguf.py` cannot write from PEFT's layout) run in llama.cpp as
the PEFT adapter runs in lora.

Writes:
  tests/fixtures/models/qwen3_moe-sparse/
                              a qwen3_moe model llama.cpp can run (its qwen3moe has every layer sparse and
                              renormalises the top k): 3 layers, 5 experts, top 2, norm_topk_prob, seeded
  tests/fixtures/gguf/
    qwen35moe/                a Qwen3.5-MoE text model llama.cpp can run (`Qwen3_5MoeForCausalLM`: Gated
                              DeltaNet and gated attention layers, 6 experts top 2 and a gated shared
                              expert; both Gated DeltaNet head sizes 8, as llama.cpp takes them from one key)
    qwen35moe-f32.gguf        convert_hf_to_gguf.py --outtype f32 --no-mtp of it
    qwen35moe-fused-f32.gguf  the same with --fuse-gate-up-exps (one ffn_gate_up_exps per layer, which
                              llama.cpp 0.3.36 accepts for qwen35moe, not for qwen3moe)
    qwen35moe-adapter/        a PEFT adapter on it: target_parameters on the experts (gate_up at rank 8 /
                              alpha 16), q_proj, v_proj, in_proj_qkv and out_proj (r 4, alpha 8), B random
    qwen35moe-adapter.gguf    `lora export` of it for qwen35moe-f32.gguf
    qwen35moe-adapter-fused.gguf   and for qwen35moe-fused-f32.gguf (pairs on ffn_gate_up_exps)
    qwen3moe-f32.gguf         convert_hf_to_gguf.py --outtype f32 of models/qwen3_moe-sparse
                              (ffn_gate_exps / ffn_up_exps / ffn_down_exps)
    mixtral-f32.gguf          convert_hf_to_gguf.py --outtype f32 of models/mixtral (llama with experts)
    qwen3moe-adapter/         a PEFT adapter on models/qwen3_moe-sparse (PEFT 0.21's target_parameters on
                              the experts from gate/up/down_proj, and q/v_proj; r 4, alpha 8), its B
                              random from a fixed seed so that it changes the logits
    qwen3moe-adapter.gguf     that adapter as `lora export` writes it for qwen3moe-f32.gguf (the lora
                              binary given below)
    mixtral-adapter.gguf      tests/fixtures/mixtral-experts-replay/adapter-trained as `lora export` writes
                              it for mixtral-f32.gguf (gate_up at rank 8 / alpha 16 beside r 4 / alpha 8:
                              a folded scale)
    moe_llama_cpp.safetensors
      input_ids               two probe rows of 12 ids (no BOS added)
      logits.<name>           llama.cpp's logits of each row on its own, every position, for
                              qwen3moe, mixtral, qwen35moe, qwen35moe-fused (the converter's files), and
                              qwen3moe+adapter, mixtral+adapter, qwen35moe+adapter,
                              qwen35moe-fused+adapter-fused (with lora's adapter files, scale 1)
    moe_llama_cpp.json        versions, seeds, the smallest router gap over the probes

Needs: llama-cpp-python 0.3.36 (a source build: CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"
pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36), torch, transformers 5.24, peft 0.21,
numpy, safetensors, sentencepiece, a lora binary (cargo build --release), and the llama-cpp-python
sdist's vendor/llama.cpp for the converter (LLAMACPP_SRC, as for make_gguf_fixtures.py).
Run: LLAMACPP_SRC=... python scripts/make_moe_gguf_fixtures.py PATH/TO/lora
"""

import json
import os
import shutil
import subprocess
import sys

import llama_cpp
import numpy as np
import peft
import safetensors.numpy
import torch
import transformers
from llama_cpp import Llama
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

sys.path.insert(0, os.path.dirname(__file__))
import make_gguf_fixtures  # noqa: E402
from make_gguf_fixtures import run_converter  # noqa: E402
from make_model_fixtures import SEED, VOCAB, fixture_tokenizer, provenance, save_peft_adapter  # noqa: E402
from make_moe_fixtures import RouterGap, base, randomize_moe  # noqa: E402
from make_qwen3_5_fixtures import text_config  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
GGUF = os.path.join(ROOT, "gguf")
IDS = [[5, 17, 42, 99, 3, 250, 7, 120, 64, 200, 11, 300], [250, 249, 1, 2, 77, 78, 79, 80, 381, 6, 13, 90]]
MODEL_SEED = SEED + 900
ADAPTER_SEED = 4321


def untied(name, first_seed, build):
    """The first seed from `first_seed` whose randomized model (`build()` under that seed) has no router
    near-tie on the probes, with the model and its smallest router gap."""
    for seed in range(first_seed, first_seed + 100):
        torch.manual_seed(seed)
        model = build()
        randomize_moe(model)
        model.eval()
        gap = RouterGap(model)
        with torch.no_grad():
            for row in IDS:
                model(torch.tensor([row]))
        if gap.gap > 1e-3:
            return model, seed, gap.gap
    raise SystemExit(f"{name}: every seed tried has a router near-tie")


def make_model(hf_tok, tok_dir):
    """models/qwen3_moe-sparse: the first seed whose probes (base and adapter) have no router near-tie."""
    ids = {s: hf_tok.convert_tokens_to_ids(s) for s in ["<|begin_of_text|>", "<|im_end|>", "<|pad|>"]}
    cfg = Qwen3MoeConfig(**base(ids, num_hidden_layers=3), head_dim=8, intermediate_size=40,
                         moe_intermediate_size=24, num_experts=5, num_experts_per_tok=2, norm_topk_prob=True,
                         decoder_sparse_step=1, mlp_only_layers=[],
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    out = os.path.join(ROOT, "models", "qwen3_moe-sparse")
    model, seed, gap = untied("qwen3_moe-sparse", MODEL_SEED, lambda: AutoModelForCausalLM.from_config(
        cfg, attn_implementation="eager", dtype=torch.float32))
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tok_dir, f), out)
    return out, seed, gap


def make_qwen35moe(hf_tok, tok_dir):
    """gguf/qwen35moe: the first seed whose probes have no router near-tie."""
    from transformers.models.qwen3_5_moe import Qwen3_5MoeTextConfig

    ids = {s: hf_tok.convert_tokens_to_ids(s) for s in ["<|begin_of_text|>", "<|im_end|>", "<|pad|>"]}
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.5,
            "mrope_interleaved": True, "mrope_section": [2, 1, 1]}
    tc = {k: v for k, v in text_config(ids, linear_value_head_dim=8, rope_parameters=rope).items()
          if k != "intermediate_size"}
    cfg = Qwen3_5MoeTextConfig(**tc, moe_intermediate_size=20, shared_expert_intermediate_size=36, num_experts=6,
                               num_experts_per_tok=2)
    out = os.path.join(GGUF, "qwen35moe")
    model, seed, gap = untied("qwen35moe", MODEL_SEED + 100, lambda: AutoModelForCausalLM.from_config(
        cfg, attn_implementation="eager", dtype=torch.float32))
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tok_dir, f), out)
    return out, seed, gap


QWEN3MOE_TARGETS = dict(target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
# PEFT converts no name on Qwen3.5-MoE's experts: they are named as target_parameters, with the rank
# and alpha lora gives gate_up_proj (make_moe_replay_fixtures.py).
QWEN35MOE_TARGETS = dict(target_modules=["q_proj", "v_proj", "in_proj_qkv", "out_proj"],
                         target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                         rank_pattern={r".*\.gate_up_proj": 8}, alpha_pattern={r".*\.gate_up_proj": 16})


def make_adapter(model_dir, name, targets, base_path):
    """A PEFT adapter on the experts and other modules, B random (PEFT's B = 0 would change nothing):
    the first seed whose probes have no router near-tie."""
    for seed in range(ADAPTER_SEED, ADAPTER_SEED + 100):
        base_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                          attn_implementation="eager")
        torch.manual_seed(seed)
        model = peft.get_peft_model(base_model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, **targets))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param_name, p in model.named_parameters():
                if "lora_B" in param_name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
        model.eval()
        gap = RouterGap(model)
        with torch.no_grad():
            for row in IDS:
                model(torch.tensor([row]))
        if gap.gap > 1e-3:
            break
    else:
        raise SystemExit(f"{name}: every seed tried has a router near-tie")
    out = os.path.join(GGUF, name)
    shutil.rmtree(out, ignore_errors=True)
    save_peft_adapter(model, out, base_path)
    with open(os.path.join(out, "adapter_config.json")) as f:
        cfg = json.load(f)
    assert cfg.get("target_parameters"), "PEFT did not target the experts as parameters"
    return out, seed, gap.gap


def logits(model, lora=None):
    # The KV cache in f32 (llama.cpp's default is f16, which alone moves these logits by ~5e-3).
    kw = dict(model_path=os.path.join(GGUF, model), n_ctx=64, n_batch=64, logits_all=True, verbose=False,
              n_threads=2, seed=0, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    if lora:
        kw["lora_path"] = os.path.join(GGUF, lora)
    llm = Llama(**kw)
    rows = []
    for row in IDS:
        llm.reset()
        llm.eval(row)
        rows.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    llm.close()
    return np.concatenate(rows)


def lora_export(lora_bin, adapter, base_file, out):
    cmd = [lora_bin, "export", adapter, "--base", os.path.join(GGUF, base_file), "-o", os.path.join(GGUF, out),
           "--type", "f32", "--force"]
    subprocess.run(cmd, check=True)
    # The Ollama Modelfile written beside it names this machine's paths; the tests do not need it.
    modelfile = os.path.join(GGUF, out.removesuffix(".gguf") + ".Modelfile")
    if os.path.exists(modelfile):
        os.remove(modelfile)


def main():
    lora_bin = os.path.abspath(sys.argv[1])
    # transformers 5.24 ignores tokenizer_config.json's class for Qwen3.5-MoE as for qwen2 and would add a
    # token to the fixture's 384 (make_gguf_fixtures.py's second workaround): load it as declared.
    make_gguf_fixtures.HONOUR_TOKENIZER_CLASS.append("qwen3_5_moe_text")
    tok_dir = os.path.join(ROOT, "tokenizer")
    hf_tok = fixture_tokenizer(tok_dir)
    assert hf_tok.vocab_size <= VOCAB
    model_dir, model_seed, model_gap = make_model(hf_tok, tok_dir)
    adapter_dir, adapter_seed, adapter_gap = make_adapter(model_dir, "qwen3moe-adapter", QWEN3MOE_TARGETS,
                                                          "tests/fixtures/models/qwen3_moe-sparse")
    q35_dir, q35_seed, q35_gap = make_qwen35moe(hf_tok, tok_dir)
    q35_adapter, q35_adapter_seed, q35_adapter_gap = make_adapter(q35_dir, "qwen35moe-adapter", QWEN35MOE_TARGETS,
                                                                  "tests/fixtures/gguf/qwen35moe")
    for extra, name in [([], "qwen35moe-f32.gguf"), (["--fuse-gate-up-exps"], "qwen35moe-fused-f32.gguf")]:
        run_converter("convert_hf_to_gguf.py", ["--outtype", "f32", "--no-mtp", "--outfile", os.path.join(GGUF, name)]
                      + extra + [q35_dir])
    run_converter("convert_hf_to_gguf.py", ["--outtype", "f32", "--outfile", os.path.join(GGUF, "qwen3moe-f32.gguf"),
                                            model_dir])
    run_converter("convert_hf_to_gguf.py", ["--outtype", "f32", "--outfile", os.path.join(GGUF, "mixtral-f32.gguf"),
                                            os.path.join(ROOT, "models", "mixtral")])
    lora_export(lora_bin, adapter_dir, "qwen3moe-f32.gguf", "qwen3moe-adapter.gguf")
    lora_export(lora_bin, os.path.join(ROOT, "mixtral-experts-replay", "adapter-trained"), "mixtral-f32.gguf",
                "mixtral-adapter.gguf")
    lora_export(lora_bin, q35_adapter, "qwen35moe-f32.gguf", "qwen35moe-adapter.gguf")
    lora_export(lora_bin, q35_adapter, "qwen35moe-fused-f32.gguf", "qwen35moe-adapter-fused.gguf")
    tensors = {"input_ids": np.array(IDS, dtype=np.int64).reshape(-1)}
    for key, model, lora in [("qwen3moe", "qwen3moe-f32.gguf", None),
                             ("mixtral", "mixtral-f32.gguf", None),
                             ("qwen3moe+adapter", "qwen3moe-f32.gguf", "qwen3moe-adapter.gguf"),
                             ("mixtral+adapter", "mixtral-f32.gguf", "mixtral-adapter.gguf"),
                             ("qwen35moe", "qwen35moe-f32.gguf", None),
                             ("qwen35moe-fused", "qwen35moe-fused-f32.gguf", None),
                             ("qwen35moe+adapter", "qwen35moe-f32.gguf", "qwen35moe-adapter.gguf"),
                             ("qwen35moe-fused+adapter-fused", "qwen35moe-fused-f32.gguf",
                              "qwen35moe-adapter-fused.gguf")]:
        tensors[f"logits.{key}"] = logits(model, lora)
    for a, b in [("qwen3moe", "qwen3moe+adapter"), ("mixtral", "mixtral+adapter"), ("qwen35moe", "qwen35moe+adapter")]:
        moved = float(np.abs(tensors[f"logits.{a}"] - tensors[f"logits.{b}"]).max())
        assert moved > 1e-2, f"{b}: the adapter moves llama.cpp's logits by only {moved}"
    safetensors.numpy.save_file(tensors, os.path.join(GGUF, "moe_llama_cpp.safetensors"))
    prov = {**provenance("scripts/make_moe_gguf_fixtures.py"), "llama_cpp_python": llama_cpp.__version__,
            "peft": peft.__version__, "transformers": transformers.__version__, "model_seed": model_seed,
            "adapter_seed": adapter_seed, "qwen35moe_seed": q35_seed, "qwen35moe_adapter_seed": q35_adapter_seed,
            "min_router_gap": {"base": model_gap, "adapter": adapter_gap, "qwen35moe": q35_gap,
                               "qwen35moe_adapter": q35_adapter_gap},
            "note": "llama.cpp CPU backend, f32 files, f32 KV cache, logits of every position, each row alone"}
    with open(os.path.join(GGUF, "moe_llama_cpp.json"), "w") as f:
        json.dump(prov, f, indent=2)


if __name__ == "__main__":
    main()
