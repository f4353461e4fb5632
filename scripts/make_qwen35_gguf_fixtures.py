#!/usr/bin/env python3
"""Golden fixtures for Qwen3.5 in GGUF (llama.cpp's `qwen35`): tiny random Qwen3.5 models converted by
llama.cpp's own converter, with transformers' logits on the folders they came from.

Writes under tests/fixtures/gguf/:
  qwen35-text.gguf       the text-only form (`Qwen3_5ForCausalLM`), untied head, F32
  qwen35-text-f16.gguf   the same converted with --outtype f16
  qwen35-hub-mtp.gguf    the Hub form (`Qwen3_5ForConditionalGeneration`, a vision tower, which the
                         converter leaves out), tied embeddings, with a multi-token-prediction block
                         (`mtp.*`, `mtp_num_hidden_layers: 1`), which llama.cpp writes as one more block
  qwen35.safetensors     `<name>.input_ids` and `<name>.logits` (transformers, f32) for each, a batch of
                         two unpadded rows
  qwen35.json            provenance

The shapes make every transform of the converter show: 2 key heads against 6 value heads (the value
heads go from grouped to tiled order), a 3-tap convolution, a layer pattern not of period 4 (written as
`attention.recurrent_layers`), randomized zero-centred norms, `A_log` and `dt_bias`. llama.cpp takes both
Gated DeltaNet head sizes from one key (`ssm.state_size`), so they are equal here (8).

The converter identifies a BPE tokenizer by hashing its output on a test text and refuses one it does not
know; the fixture tokenizer (384 tokens) is made to pass as `qwen2`, which is what Qwen's own tokenizer is
recognised as (the tokenizer is not what these fixtures test), and is loaded as the plain fast tokenizer it
is (AutoTokenizer would take the Hub form's model_type for Qwen3.5's tokenizer class, which adds a token).

Run: python scripts/make_qwen35_gguf_fixtures.py LLAMA_CPP_DIR [--out tests/fixtures]
LLAMA_CPP_DIR: vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist (convert_hf_to_gguf.py, gguf-py).
Needs: torch, transformers 5.24, safetensors.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import safetensors.torch
import torch
from transformers import AutoModelForCausalLM
from transformers.models.qwen3_5 import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5TextConfig

sys.path.insert(0, os.path.dirname(__file__))
from make_model_fixtures import SEED, fixture_tokenizer, provenance  # noqa: E402
from make_qwen3_5_fixtures import randomize_gdn, text_config  # noqa: E402

IDS = [[5, 17, 42, 99, 3, 250, 7, 120, 64, 200, 11, 300], [250, 249, 1, 2, 77, 78, 79, 80, 381, 6, 13, 90]]


def convert(llama_cpp, folder, out_file, outtype, no_mtp):
    """llama.cpp's convert_hf_to_gguf.py, in this process, with the fixture tokenizer taken as qwen2's."""
    sys.path.insert(0, os.path.join(llama_cpp, "gguf-py"))
    sys.path.insert(0, llama_cpp)
    import convert_hf_to_gguf
    from conversion import base, qwen

    # main() sets --no-mtp on the class; a second conversion in this process must start without it.
    qwen.Qwen3_5TextModel.no_mtp = False

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    # AutoTokenizer would pick Qwen3.5's tokenizer class for the Hub form's model_type and add a token.
    import transformers

    transformers.AutoTokenizer.from_pretrained = lambda d, *a, **k: transformers.PreTrainedTokenizerFast.from_pretrained(d)
    argv = [folder, "--outfile", out_file, "--outtype", outtype] + (["--no-mtp"] if no_mtp else [])
    old, sys.argv = sys.argv, ["convert_hf_to_gguf.py"] + argv
    try:
        convert_hf_to_gguf.main()
    finally:
        sys.argv = old


def add_mtp(folder, tc):
    """The multi-token-prediction block the released checkpoints carry (one attention layer and its
    fusion), which transformers neither loads nor saves."""
    h, i = tc["hidden_size"], tc["intermediate_size"]
    heads, kv, hd = tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    g = torch.Generator().manual_seed(SEED + 203)
    r = lambda *s: 0.2 * torch.randn(*s, generator=g)  # noqa: E731
    t = {
        "mtp.fc.weight": r(h, 2 * h),
        "mtp.pre_fc_norm_embedding.weight": r(h),
        "mtp.pre_fc_norm_hidden.weight": r(h),
        "mtp.norm.weight": r(h),
    }
    p = "mtp.layers.0."
    t.update({
        p + "input_layernorm.weight": r(h),
        p + "post_attention_layernorm.weight": r(h),
        p + "self_attn.q_proj.weight": r(2 * heads * hd, h),
        p + "self_attn.k_proj.weight": r(kv * hd, h),
        p + "self_attn.v_proj.weight": r(kv * hd, h),
        p + "self_attn.o_proj.weight": r(h, heads * hd),
        p + "self_attn.q_norm.weight": r(hd),
        p + "self_attn.k_norm.weight": r(hd),
        p + "mlp.gate_proj.weight": r(i, h),
        p + "mlp.up_proj.weight": r(i, h),
        p + "mlp.down_proj.weight": r(h, i),
    })
    path = os.path.join(folder, "model.safetensors")
    tensors = safetensors.torch.load_file(path)
    tensors.update(t)
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["text_config"]["mtp_num_hidden_layers"] = 1
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def save_folder(model, folder, tok_dir):
    """The model saved as transformers saves it, with the fixture tokenizer beside it."""
    model.save_pretrained(folder)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tok_dir, f), folder)
    return folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("llama_cpp")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    tok_dir = os.path.join(out, "tokenizer")
    hf_tok = fixture_tokenizer(tok_dir)
    ids = {s: hf_tok.convert_tokens_to_ids(s) for s in ["<|begin_of_text|>", "<|im_end|>", "<|pad|>"]}
    gguf_dir = os.path.join(out, "gguf")
    work = tempfile.mkdtemp()
    goldens = {}
    batch = torch.tensor(IDS, dtype=torch.int64)
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.5,
            "mrope_interleaved": True, "mrope_section": [2, 1, 1]}

    # 1) The text-only form.
    torch.manual_seed(SEED + 200)
    tc = text_config(ids, num_hidden_layers=5, linear_value_head_dim=8, rope_parameters=dict(rope),
                     layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention",
                                  "full_attention"])
    model = AutoModelForCausalLM.from_config(Qwen3_5TextConfig(**tc), attn_implementation="eager",
                                             dtype=torch.float32)
    randomize_gdn(model)
    model.eval()
    folder = save_folder(model, os.path.join(work, "text"), tok_dir)
    with torch.no_grad():
        goldens["qwen35-text.logits"] = model(batch).logits.float().contiguous()
    goldens["qwen35-text.input_ids"] = batch
    convert(args.llama_cpp, folder, os.path.join(gguf_dir, "qwen35-text.gguf"), "f32", no_mtp=True)
    convert(args.llama_cpp, folder, os.path.join(gguf_dir, "qwen35-text-f16.gguf"), "f16", no_mtp=True)

    # 2) The Hub form, tied, with an MTP block.
    torch.manual_seed(SEED + 201)
    tc = text_config(ids, num_hidden_layers=3, linear_value_head_dim=8, tie_word_embeddings=True,
                     rope_parameters=dict(rope))
    tc["layer_types"] = ["linear_attention", "linear_attention", "full_attention"]
    vision = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32, num_position_embeddings=16)
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=tc, vision_config=vision,
                                                          tie_word_embeddings=True)).to(torch.float32)
    model.config._attn_implementation = "eager"
    randomize_gdn(model)
    model.eval()
    folder = save_folder(model, os.path.join(work, "hub"), tok_dir)
    add_mtp(folder, tc)
    with torch.no_grad():
        goldens["qwen35-hub-mtp.logits"] = model(input_ids=batch).logits.float().contiguous()
    goldens["qwen35-hub-mtp.input_ids"] = batch.clone()
    convert(args.llama_cpp, folder, os.path.join(gguf_dir, "qwen35-hub-mtp.gguf"), "f32", no_mtp=False)

    safetensors.torch.save_file(goldens, os.path.join(gguf_dir, "qwen35.safetensors"))
    prov = provenance("scripts/make_qwen35_gguf_fixtures.py",
                      converter="llama.cpp 0.3.36 convert_hf_to_gguf.py (llama-cpp-python sdist)")
    with open(os.path.join(gguf_dir, "qwen35.json"), "w") as f:
        json.dump(prov, f, indent=2, sort_keys=True)
    shutil.rmtree(work)
    print(json.dumps(prov))


if __name__ == "__main__":
    main()
