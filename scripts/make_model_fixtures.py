#!/usr/bin/env python3
"""Golden fixtures for the model core: tiny random Llama / Mistral / Qwen2 / Qwen3 models run by transformers.

Writes tests/fixtures/ (committed; a few hundred KB in all):
  tokenizer/           a byte-level BPE tokenizer.json trained here (real `tokenizers` format, Llama-3 style
                       BOS post-processor, ChatML special tokens), shared by every model
  models/<name>/       Hugging Face model folders as `save_pretrained` writes them
  golden/<name>.safetensors + golden/<name>.json
                       logits and per-layer hidden states for a left-padded batch, greedy generations,
                       mean loss of `model(ids, labels=ids)` on two texts
  provenance.json      package versions and seeds

Run: python scripts/make_model_fixtures.py [--out tests/fixtures]
Needs: torch, transformers (>= 5), tokenizers, safetensors (pip install torch transformers safetensors).
"""

import argparse
import json
import os
import shutil
import sys

import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

SEED = 1234
VOCAB = 384

CORPUS = """
In the beginning the model was small, and the loss was high. The trainer read the text line by line,
and every token it saw made the next one a little easier to guess. A low-rank adapter is a pair of thin
matrices: A projects the input down to r dimensions and B projects it back up. The base weights stay
frozen; only the adapter learns. Merging folds B times A into the weight, so the served model is as fast
as the original. Llamas, mistrals and qwens share one shape: embeddings, a stack of decoder layers with
attention and a gated MLP, a final norm and a head that turns hidden states into logits over the vocabulary.
Rotary position embeddings turn each query and key by an angle that grows with the position. Grouped-query
attention lets several query heads share one key and value head. The quick brown fox jumps over the lazy dog;
pack my box with five dozen liquor jugs. 0123456789 + - * / = ( ) [ ] { } < > ! ? , . ; : ' " @ # $ % ^ & _
Hello, world! How are you today? I am fine, thank you. What is the capital of France? Paris is the capital.
""" * 4

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer(out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    cfg = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "padding_side": "left",
        "model_max_length": 256,
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return {s: tok.token_to_id(s) for s in SPECIALS}


def common(ids):
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|end_of_text|>"]],
        pad_token_id=ids["<|pad|>"],
    )


def model_specs(ids):
    c = common(ids)
    return {
        # Llama 3 style: explicit head_dim != hidden/heads, biases everywhere, llama3 rope scaling, untied head.
        "llama": LlamaConfig(
            **{**c, "num_hidden_layers": 3},
            head_dim=16,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        # Llama 2 style: MHA (kv heads == heads), default rope, tied embeddings.
        "llama-tied": LlamaConfig(
            **{**c, "num_key_value_heads": 4},
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        "mistral": MistralConfig(
            **c,
            sliding_window=4096,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        "qwen2": Qwen2Config(
            **c,
            tie_word_embeddings=True,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        "qwen3": Qwen3Config(
            **c,
            head_dim=16,
            tie_word_embeddings=True,
            attention_bias=False,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
    }


def randomize(model):
    """Norm weights and biases are ones/zeros at init; randomize them so that loading them is tested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))


def to_hub_form(config_path):
    """Rewrite a transformers-5 config.json into the form most Hub checkpoints have (rope_theta, torch_dtype)."""
    with open(config_path) as f:
        cfg = json.load(f)
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rope
    else:
        cfg["rope_scaling"] = None
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.46.0"
    with open(config_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


PROMPTS = ["The quick brown fox jumps over the lazy dog", "A low-rank adapter is"]
EVAL_TEXTS = [
    "Merging folds B times A into the weight.",
    "Hello, world! What is the capital of France? Paris is the capital of France.",
]
NEW_TOKENS = 12


def fixture_tokenizer(tok_dir):
    """The fixture tokenizer as transformers runs it: the exact file, as the Rust `tokenizers` crate
    reads it (AutoTokenizer may rebuild the pre-tokenizer), padding on the left."""
    return PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(tok_dir, "tokenizer.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        padding_side="left",
    )


def save_peft_adapter(model, directory, base):
    """Saves a PeftModel's adapter as committed fixtures have it: no README, `base` (a repository path)
    as base_model_name_or_path instead of this machine's, target_modules sorted (PEFT writes a set)."""
    model.save_pretrained(directory)
    os.remove(os.path.join(directory, "README.md"))
    cfg_path = os.path.join(directory, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = base
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def provenance(script, **extra):
    """Package versions and the seed, for a fixture script's provenance record."""
    return {
        "script": script,
        "seed": SEED,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "attn_implementation": "eager",
        **extra,
    }


def goldens(model, hf_tok, name, out_dir):
    tensors = {}
    meta = {"prompts": PROMPTS, "eval_texts": EVAL_TEXTS}
    # 1) A left-padded batch (as a tokenizer with padding_side=left gives it).
    batch = hf_tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    tensors["input_ids"] = batch["input_ids"].to(torch.int64).contiguous()
    tensors["attention_mask"] = batch["attention_mask"].to(torch.int64).contiguous()
    tensors["logits"] = out.logits.float().contiguous()
    # hidden_states: embeddings, then the output of each layer; the last one has the final norm applied.
    for i, h in enumerate(out.hidden_states):
        tensors[f"hidden_states.{i}"] = h.float().contiguous()
    meta["num_hidden_states"] = len(out.hidden_states)

    # 2) Greedy generation per prompt, unpadded.
    gens = []
    for p in PROMPTS:
        ids = hf_tok(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            g = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS)
            # Margin between the top two logits at each greedy step: a near-tie would make the
            # comparison fragile, so the script refuses such a seed.
            step = model(g[:, :-1]).logits[0, ids.shape[1] - 1 :]
            top2 = step.topk(2, dim=-1).values
            margin = float((top2[:, 0] - top2[:, 1]).min())
        assert margin > 1e-3, f"{name}: greedy near-tie ({margin}); change the seed"
        gens.append({"prompt": p, "prompt_ids": ids[0].tolist(), "generated_ids": g[0, ids.shape[1] :].tolist(),
                     "min_top2_margin": margin})
    meta["greedy"] = gens

    # 3) Eval loss: mean over all predicted tokens of all texts, as `model(ids, labels=ids).loss` per text.
    total, count = 0.0, 0
    per_text = []
    for t in EVAL_TEXTS:
        ids = hf_tok(t, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = float(model(ids, labels=ids).loss)
        n = ids.shape[1] - 1
        per_text.append({"text": t, "loss": loss, "predicted_tokens": n})
        total += loss * n
        count += n
    meta["eval"] = {"per_text": per_text, "mean_loss": total / count, "predicted_tokens": count}

    safetensors.torch.save_file(tensors, os.path.join(out_dir, f"{name}.safetensors"))
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    # Only what this script writes: other scripts (make_qwen3_5_fixtures.py) add models and goldens beside.
    shutil.rmtree(os.path.join(out, "tokenizer"), ignore_errors=True)
    names = list(model_specs({s: 0 for s in SPECIALS})) + ["llama-bf16", "llama-f16"]
    for name in names:
        shutil.rmtree(os.path.join(out, "models", name), ignore_errors=True)
        for ext in [".json", ".safetensors", "-upcast.safetensors"]:
            path = os.path.join(out, "golden", name + ext)
            if os.path.exists(path):
                os.remove(path)

    torch.manual_seed(SEED)
    tok_dir = os.path.join(out, "tokenizer")
    ids = build_tokenizer(tok_dir)
    hf_tok = fixture_tokenizer(tok_dir)

    golden_dir = os.path.join(out, "golden")
    os.makedirs(golden_dir, exist_ok=True)
    for i, (name, cfg) in enumerate(model_specs(ids).items()):
        torch.manual_seed(SEED + i)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        randomize(model)
        model.eval()
        model_dir = os.path.join(out, "models", name)
        # Mistral is saved sharded so that the index path is exercised.
        shard = "40KB" if name == "mistral" else "50GB"
        model.save_pretrained(model_dir, max_shard_size=shard)
        model.generation_config.save_pretrained(model_dir)
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(os.path.join(tok_dir, f), model_dir)
        if name == "qwen2":
            # Exercise the Hub (transformers 4) config form; reload to prove transformers reads it the same.
            to_hub_form(os.path.join(model_dir, "config.json"))
            model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
            model.eval()
        goldens(model, hf_tok, name, golden_dir)

        if name == "llama":
            # Half-precision copies, converted by transformers, and the exact f32 values they hold.
            for dt, label in [(torch.bfloat16, "bf16"), (torch.float16, "f16")]:
                half_dir = os.path.join(out, "models", f"llama-{label}")
                m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dt)
                m.save_pretrained(half_dir)
                for f in ["tokenizer.json", "tokenizer_config.json"]:
                    shutil.copy(os.path.join(tok_dir, f), half_dir)
                upcast = {k: v.float().contiguous() for k, v in m.state_dict().items()}
                safetensors.torch.save_file(upcast, os.path.join(golden_dir, f"llama-{label}-upcast.safetensors"))

    prov = provenance("scripts/make_model_fixtures.py")
    with open(os.path.join(out, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)
    print(json.dumps(prov))


if __name__ == "__main__":
    main()
