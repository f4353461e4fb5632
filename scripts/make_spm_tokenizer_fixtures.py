#!/usr/bin/env python3
"""SentencePiece-style ('llama') GGUF tokenizers and llama.cpp's own tokenization of them, so that the
tests can check that lora tokenizes a Llama/Mistral GGUF exactly as llama.cpp does, and that a GGUF
lora exports from a Hugging Face SentencePiece folder tokenizes in llama.cpp as the folder does.

Writes tests/fixtures/gguf/vocab/:
  ggml-vocab-llama-spm.gguf(.inp, .out)  llama.cpp's tokenizer test vectors for the LLaMA vocabulary
                                         (32,000 pieces, real SentencePiece scores), copied from the
                                         llama.cpp source that llama-cpp-python 0.3.36 vendors
  spm-tiny/                              a 512-piece SentencePiece BPE model trained here (byte
                                         fallback, dummy prefix, split digits, as Llama's), as a
                                         Hugging Face folder: tokenizer.model, the tokenizer.json
                                         transformers converts it to, tokenizer_config.json
  spm-tiny.gguf                          llama.cpp's convert_hf_to_gguf.py --vocab-only of spm-tiny/
                                         (it reads tokenizer.model: the real scores)
  spm.json                               token ids of the texts below: llama.cpp's for both GGUF files
                                         (special tokens parsed, with BOS and without), and the
                                         Hugging Face tokenizer's for spm-tiny/; versions

Needs: llama-cpp-python 0.3.36 (see make_llama_cpp_fixtures.py), sentencepiece, protobuf (transformers
reads tokenizer.model through it), transformers, tokenizers, numpy, and network access for the llama-cpp-python sdist (or --sdist PATH).
Run: python scripts/make_spm_tokenizer_fixtures.py [--sdist llama_cpp_python-0.3.36.tar.gz]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

import llama_cpp
import sentencepiece as spm
import tokenizers
import transformers
from llama_cpp import Llama

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf", "vocab")
SDIST = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
         "llama_cpp_python-0.3.36.tar.gz")
VENDOR = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
SEED = 0

# Texts for both vocabularies: plain prose, whitespace runs, digits, characters outside the tiny
# vocabulary (byte fallback), and special tokens in text.
TEXTS = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello World!  How are you?\n\nFine, thanks.",
    "   leading spaces, trailing   ",
    "tabs\tand\nnew\r\nlines\n\n\n",
    "numbers 1234567 and 3.14159, dates 2026-12-01",
    "unicode: héllo wörld 🦙 中文 Ελληνικά ☃",
    "<s>[INST] What is the shepherd? [/INST] The shepherd is wonderful.</s>",
    "a</s>b<s> c <unk> d",
    "The LORD is my shepherd; I shall not want.",
    "ᵾ",
]


def sdist_path(arg):
    if arg:
        return arg
    path = os.path.join(tempfile.gettempdir(), "llama_cpp_python-0.3.36.tar.gz")
    if not os.path.exists(path):
        urllib.request.urlretrieve(SDIST, path)
    return path


def llama_cpp_ids(gguf, texts, add_bos, special):
    llm = Llama(model_path=gguf, vocab_only=True, verbose=False)
    out = [llm.tokenize(t.encode("utf-8"), add_bos=add_bos, special=special) for t in texts]
    llm.close()
    return out


def corpus(path):
    """Every string of the repository's datasets, one per line."""
    lines = []
    for name in ["quickstart-chat.jsonl", "tiny-text.jsonl"]:
        for line in open(os.path.join(ROOT, "datasets", name)):
            row = json.loads(line)
            if "text" in row:
                lines.append(row["text"])
            for m in row.get("messages", []):
                lines.append(m["content"])
    lines += ["Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2026.", "Tabs\tand  double  spaces."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdist", help="llama_cpp_python-0.3.36.tar.gz (downloaded when not given)")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp()
    with tarfile.open(sdist_path(args.sdist)) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(VENDOR) and (
            "/models/ggml-vocab-llama-spm.gguf" in m.name or m.name.endswith("convert_hf_to_gguf.py")
            or "/gguf-py/" in m.name or "/conversion/" in m.name)]
        tar.extractall(work, members=members, filter="data")
    vendor = os.path.join(work, VENDOR)

    # 1. llama.cpp's LLaMA vocabulary and its test vectors (tests/test-tokenizer-0: no BOS, no special
    #    parsing), re-checked here against this llama.cpp build.
    llama_spm = os.path.join(OUT, "ggml-vocab-llama-spm.gguf")
    for ext in ["", ".inp", ".out"]:
        shutil.copyfile(os.path.join(vendor, "models", "ggml-vocab-llama-spm.gguf" + ext), llama_spm + ext)
    inp = open(llama_spm + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
    expected = [[int(x) for x in line.split()] for line in open(llama_spm + ".out").read().split("\n")[: len(inp)]]
    got = llama_cpp_ids(llama_spm, inp, False, False)
    assert got == expected, "llama.cpp disagrees with its own test vectors"

    # 2. A tiny SentencePiece BPE model with Llama's options, its Hugging Face conversion, and llama.cpp's.
    tiny = os.path.join(OUT, "spm-tiny")
    shutil.rmtree(tiny, ignore_errors=True)
    os.makedirs(tiny)
    text = os.path.join(work, "corpus.txt")
    corpus(text)
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=os.path.join(work, "tokenizer"), vocab_size=512, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", character_coverage=0.995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, seed_sentencepiece_size=100000, num_threads=1,
        minloglevel=2)
    shutil.copyfile(os.path.join(work, "tokenizer.model"), os.path.join(tiny, "tokenizer.model"))
    hf = transformers.LlamaTokenizer.from_pretrained(tiny, legacy=True, add_bos_token=True, add_eos_token=False)
    hf.save_pretrained(tiny)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
              "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
              "bos_token_id": 1, "eos_token_id": 2}
    conf_dir = os.path.join(work, "spm-tiny-model")
    shutil.copytree(tiny, conf_dir)
    json.dump(config, open(os.path.join(conf_dir, "config.json"), "w"))
    tiny_gguf = os.path.join(OUT, "spm-tiny.gguf")
    env = dict(os.environ, PYTHONPATH=os.path.join(vendor, "gguf-py"))
    run = subprocess.run([sys.executable, os.path.join(vendor, "convert_hf_to_gguf.py"), "--vocab-only",
                          "--outfile", tiny_gguf, conf_dir], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"convert_hf_to_gguf.py failed:\n{run.stderr}")
    # What the tests read: the files transformers writes, less the ones they do not need.
    for extra in ["special_tokens_map.json", "chat_template.jinja"]:
        if os.path.exists(os.path.join(tiny, extra)):
            os.remove(os.path.join(tiny, extra))

    hf_fast = tokenizers.Tokenizer.from_file(os.path.join(tiny, "tokenizer.json"))
    out = {
        "texts": TEXTS,
        "llama-spm": {"special": llama_cpp_ids(llama_spm, TEXTS, False, True),
                      "bos_special": llama_cpp_ids(llama_spm, TEXTS, True, True)},
        "spm-tiny": {"special": llama_cpp_ids(tiny_gguf, TEXTS, False, True),
                     "bos_special": llama_cpp_ids(tiny_gguf, TEXTS, True, True),
                     "hf_plain": [hf_fast.encode(t, add_special_tokens=False).ids for t in TEXTS],
                     "hf_bos": [hf_fast.encode(t, add_special_tokens=True).ids for t in TEXTS]},
        "provenance": {"script": "scripts/make_spm_tokenizer_fixtures.py", "python": sys.version.split()[0],
                       "llama_cpp_python": llama_cpp.__version__, "sentencepiece": spm.__version__,
                       "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                       "seed": SEED, "sdist": SDIST,
                       "note": "llama.cpp ids from Llama(vocab_only=True).tokenize(text, add_bos, special)"},
    }
    # Where they differ: llama.cpp prefixes a space to text that already starts with one, and after
    # every special token; transformers' Metaspace ("always") does neither.
    agree = [a == b for a, b in zip(out["spm-tiny"]["special"], out["spm-tiny"]["hf_plain"])]
    out["provenance"]["hf_equals_llama_cpp"] = agree
    json.dump(out, open(os.path.join(OUT, "spm.json"), "w"), indent=1, ensure_ascii=False)
    shutil.rmtree(work)
    print("spm-tiny: Hugging Face and llama.cpp agree on", sum(agree), "of", len(agree), "texts")


if __name__ == "__main__":
    main()
