#!/usr/bin/env python3
"""llama.cpp's own run of Qwen3.5 (`qwen35`) files that lora writes, through llama-cpp-python: the
proof that lora's GGUF exports of Qwen3.5 models and adapters run in llama.cpp as they run in lora.

Writes under tests/fixtures/gguf/:
  qwen35-adapter/            a PEFT LoRA adapter (r 4, alpha 8, random A and B from a fixed seed) for the
                             text model of qwen35-text.gguf, on the Gated DeltaNet projections of layers 0
                             and 2 (in_proj_qkv, in_proj_z, in_proj_a, in_proj_b, out_proj: every kind the
                             value-head reorder touches) and q_proj of layer 1
  qwen35-adapter.gguf        that adapter as `lora export` writes it (the lora binary given below)
  qwen35_llama_cpp.safetensors
    input_ids                the two probe rows of make_qwen35_gguf_fixtures.py (no BOS added)
    logits.base              llama.cpp's logits of qwen35-text.gguf (llama.cpp's converter's file), each
                             row on its own, every position
    logits.adapter           the same with lora's qwen35-adapter.gguf applied (scale 1)
    logits.hub-mtp           llama.cpp's logits of qwen35-hub-mtp.gguf (the converter's file with a
                             multi-token-prediction block, which llama.cpp loads and lora writes alike)
    logits.merged            llama.cpp's logits of the merged model lora exports: `lora merge
                             qwen35-text.gguf qwen35-adapter`, then `lora export` of that folder (f32)
    greedy.merged            llama.cpp's greedy continuation (8 tokens) of row 0 on the merged f32 file
  qwen35-merged-bf16.gguf    llama.cpp's converter's own file of that merged folder, --outtype bf16
  qwen35-merged-q8_0.gguf    and --outtype q8_0, which the tests compare with lora's exports. llama.cpp's
                             own logits are not the check for these types: its CPU matmul rounds the
                             activations to the weights' type (bf16 moves these sensitive random models' logits
                             by 0.3), and llama.cpp 0.3.36 crashes (SIGSEGV in decode) on this q8_0 file, the
                             converter's as lora's
  qwen35_llama_cpp.json      versions

Needs: llama-cpp-python 0.3.36 (a source build: CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"
pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36), numpy, safetensors, and a lora
binary (cargo build --release); for the converter, torch and transformers 5.24 and LLAMA_CPP_DIR, the
vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist.
Run: python scripts/make_qwen35_llama_cpp_fixtures.py PATH/TO/lora LLAMA_CPP_DIR
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import llama_cpp
import numpy as np
import safetensors.numpy
from llama_cpp import Llama

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gguf")
IDS = [[5, 17, 42, 99, 3, 250, 7, 120, 64, 200, 11, 300], [250, 249, 1, 2, 77, 78, 79, 80, 381, 6, 13, 90]]
SEED = 1234
R, ALPHA = 4, 8
# (module, in, out) for the text model of qwen35-text.gguf: hidden 32, 2 key heads and 6 value heads
# of 8, 4 attention heads of 16 (q_proj also carries the output gate).
MODULES = []
for layer in (0, 2):
    p = f"model.layers.{layer}.linear_attn."
    MODULES += [(p + "in_proj_qkv", 32, 80), (p + "in_proj_z", 32, 48), (p + "in_proj_a", 32, 6),
                (p + "in_proj_b", 32, 6), (p + "out_proj", 48, 32)]
MODULES.append(("model.layers.1.self_attn.q_proj", 32, 128))


def write_adapter(folder):
    rng = np.random.default_rng(SEED + 300)
    tensors = {}
    for module, d_in, d_out in MODULES:
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = (0.3 * rng.standard_normal((R, d_in))).astype(np.float32)
        # B small enough that the merged model stays as tame as the base (these randomized models are
        # sensitive: f16 weights alone move their logits by 1%).
        tensors[f"{key}.lora_B.weight"] = (0.05 * rng.standard_normal((d_out, R))).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    safetensors.numpy.save_file(tensors, os.path.join(folder, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
              "target_modules": sorted({m.rsplit(".", 1)[1] for m, _, _ in MODULES}), "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False,
              "base_model_name_or_path": None}
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def lora(binary, *args):
    subprocess.run([binary, *args], check=True)


def llm_of(model_path, lora_path=None):
    # The KV cache in f32 (llama.cpp's default f16 alone moves logits by ~5e-3).
    kw = dict(model_path=model_path, n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2, seed=0,
              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    if lora_path:
        kw["lora_path"] = lora_path
    return Llama(**kw)


def logits(model_path, lora_path=None):
    llm = llm_of(model_path, lora_path)
    rows = []
    for ids in IDS:
        llm.reset()
        llm.eval(ids)
        rows.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    llm.close()
    return np.stack(rows)


def greedy(model_path, ids, n):
    llm = llm_of(model_path)
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        llm.eval([t])
    llm.close()
    return out


def main():
    binary = os.path.abspath(sys.argv[1])
    base = os.path.join(ROOT, "qwen35-text.gguf")
    adapter = os.path.join(ROOT, "qwen35-adapter")
    adapter_gguf = os.path.join(ROOT, "qwen35-adapter.gguf")
    write_adapter(adapter)
    lora(binary, "export", adapter, "--base", base, "-o", adapter_gguf, "--type", "f32", "--force")
    modelfile = os.path.join(ROOT, "qwen35-adapter.Modelfile")
    if os.path.exists(modelfile):
        os.remove(modelfile)
    # A fixed place: the converter copies the merged folder's model card (which names its base by path)
    # into the files' metadata.
    work = os.path.join(tempfile.gettempdir(), "lora-qwen35-llama-cpp-fixtures")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    merged = os.path.join(work, "merged")
    lora(binary, "merge", base, adapter, "-o", merged, "--dtype", "f32")
    merged_gguf = os.path.join(work, "merged.gguf")
    lora(binary, "export", merged, "-o", merged_gguf, "--type", "f32")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_qwen35_gguf_fixtures import convert

    for t in ("bf16", "q8_0"):
        convert(sys.argv[2], merged, os.path.join(ROOT, f"qwen35-merged-{t}.gguf"), t, no_mtp=True)

    t = {"input_ids": np.array(IDS, dtype=np.int64)}
    t["logits.base"] = logits(base)
    t["logits.adapter"] = logits(base, adapter_gguf)
    t["logits.hub-mtp"] = logits(os.path.join(ROOT, "qwen35-hub-mtp.gguf"))
    t["logits.merged"] = logits(merged_gguf)
    t["greedy.merged"] = np.array(greedy(merged_gguf, IDS[0], 8), dtype=np.int64)
    shutil.rmtree(work)
    safetensors.numpy.save_file(t, os.path.join(ROOT, "qwen35_llama_cpp.safetensors"))
    prov = {"script": "scripts/make_qwen35_llama_cpp_fixtures.py", "python": sys.version.split()[0],
            "llama_cpp_python": llama_cpp.__version__, "numpy": np.__version__, "seed": SEED,
            "converter": "llama.cpp 0.3.36 convert_hf_to_gguf.py (llama-cpp-python sdist)",
            "note": "llama.cpp CPU backend, f32 KV cache, each row evaluated on its own"}
    with open(os.path.join(ROOT, "qwen35_llama_cpp.json"), "w") as f:
        json.dump(prov, f, indent=2, sort_keys=True)
    print(json.dumps(prov))
    print("adapter moves logits by", float(np.abs(t["logits.adapter"] - t["logits.base"]).max()),
          "; merged vs adapter", float(np.abs(t["logits.merged"] - t["logits.adapter"]).max()))


if __name__ == "__main__":
    main()
