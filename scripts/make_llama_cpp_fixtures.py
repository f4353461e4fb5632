#!/usr/bin/env python3
"""llama.cpp's own logits for the GGUF fixtures, through llama-cpp-python, so that the tests can check
that lora reads GGUF models and LoRA adapters as llama.cpp runs them.

Writes tests/fixtures/gguf/llama_cpp.safetensors (+ llama_cpp.json with versions):
  input_ids                    the probe sequence (no BOS added: the ids are given as they are)
  logits.llama-f32             llama.cpp's logits of tests/fixtures/gguf/llama-f32.gguf, every position
  logits.llama-f32+adapter-qv  the same with convert_lora_to_gguf.py's adapter-qv.gguf applied (scale 1)

Needs: llama-cpp-python (a source build: CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"
pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36), numpy, safetensors.
Run: python scripts/make_llama_cpp_fixtures.py
"""

import json
import os
import sys

import llama_cpp
import numpy as np
import safetensors.numpy
from llama_cpp import Llama

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gguf")
IDS = [0, 17, 250, 33, 100, 7, 301, 45, 12, 99, 150, 8, 77, 260, 31, 5]


def logits(model, lora=None):
    # The KV cache in f32 (llama.cpp's default is f16, which alone moves these logits by ~5e-3).
    kw = dict(model_path=os.path.join(ROOT, model), n_ctx=64, n_batch=64, logits_all=True, verbose=False,
              n_threads=2, seed=0, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    if lora:
        kw["lora_path"] = os.path.join(ROOT, lora)
    llm = Llama(**kw)
    llm.reset()
    llm.eval(IDS)
    out = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    llm.close()
    return out


def main():
    tensors = {"input_ids": np.array(IDS, dtype=np.int64)}
    tensors["logits.llama-f32"] = logits("llama-f32.gguf")
    tensors["logits.llama-f32+adapter-qv"] = logits("llama-f32.gguf", "adapter-qv.gguf")
    safetensors.numpy.save_file(tensors, os.path.join(ROOT, "llama_cpp.safetensors"))
    prov = {"script": "scripts/make_llama_cpp_fixtures.py", "python": sys.version.split()[0],
            "llama_cpp_python": llama_cpp.__version__, "numpy": np.__version__,
            "note": "llama.cpp CPU backend, f32 model and adapter, f32 KV cache, logits of every position"}
    json.dump(prov, open(os.path.join(ROOT, "llama_cpp.json"), "w"), indent=2)
    d = np.abs(tensors["logits.llama-f32"] - tensors["logits.llama-f32+adapter-qv"]).max()
    print(json.dumps(prov), "adapter changes logits by", float(d))


if __name__ == "__main__":
    main()
