#!/usr/bin/env python3
"""Golden fixtures for the merge engine: mergekit merges and PEFT adapter folds of tiny random models.

Writes tests/fixtures/merge/ (committed; a few hundred KB in all):
  base/, ft1/, ft2/, ft3/   a tiny random Llama (hidden 16, 2 layers, vocab 64, f32) and three
                            "fine-tunes" (base + seeded Gaussian noise), Hugging Face folders
  configs/<name>.toml       the merge configurations, in lora's TOML (mergekit's keys)
  expected/<name>.safetensors
                            mergekit 0.1.5's output weights for each configuration (run with the
                            same configuration as YAML, computed in float32)
  adapters/a1, adapters/a2  PEFT LoRA adapters for tests/fixtures/models/llama (a1: r 4, alpha 8,
                            all linear modules; a2: r 8, alpha 4, rsLoRA, q/v/down), lora_B randomized
  expected/fold.safetensors PEFT's merge_and_unload(adapter_names=[a1, a2]) weights of layer 0, and
                            the merged model's logits on FOLD_IDS (tensor "logits", [1, T, vocab])
  provenance.json           package versions, seeds, configurations

DARE and DELLA draw random masks from torch's global generator, which lora does not reproduce; they
are tested by their algebraic properties instead, and have no fixture here.

Run: python scripts/make_merge_fixtures.py
Needs: torch, transformers (>= 5), peft, mergekit 0.1.5, safetensors.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import mergekit
import peft
import safetensors
import safetensors.torch
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests/fixtures/merge")
LLAMA = os.path.join(ROOT, "tests/fixtures/models/llama")
SEED = 4321
FOLD_IDS = [0, 5, 17, 42, 99, 200, 383, 7]

CONFIGS = {
    # three models: checks the order of accumulation against mergekit's
    "linear": """merge_method = "linear"
dtype = "float32"
[[models]]
model = "ft1"
parameters = { weight = 0.3 }
[[models]]
model = "ft2"
parameters = { weight = 0.5 }
[[models]]
model = "ft3"
parameters = { weight = 0.45 }
""",
    "task_arithmetic": """merge_method = "task_arithmetic"
base_model = "base"
dtype = "float32"
[parameters]
lambda = 0.9
[[models]]
model = "ft1"
parameters = { weight = 0.7 }
[[models]]
model = "ft2"
parameters = { weight = [0.2, 1.0] }
""",
    "ties": """merge_method = "ties"
base_model = "base"
dtype = "float32"
[[models]]
model = "ft1"
parameters = { weight = 0.6, density = 0.5 }
[[models]]
model = "ft2"
parameters = { weight = [{ filter = "mlp", value = 0.3 }, { value = 0.9 }], density = [0.3, 0.8] }
[[models]]
model = "ft3"
parameters = { weight = 0.5, density = 0.7 }
""",
    "breadcrumbs": """merge_method = "breadcrumbs"
base_model = "base"
dtype = "float32"
[[models]]
model = "ft1"
parameters = { weight = 0.5, density = 0.8, gamma = 0.05 }
[[models]]
model = "ft2"
parameters = { weight = 0.5, density = 0.6, gamma = 0.1 }
""",
    "breadcrumbs_ties": """merge_method = "breadcrumbs_ties"
base_model = "base"
dtype = "float32"
[[models]]
model = "ft1"
parameters = { weight = 0.5, density = 0.8, gamma = 0.05 }
[[models]]
model = "ft2"
parameters = { weight = 0.7, density = 0.6, gamma = 0.1 }
""",
    "slerp": """merge_method = "slerp"
base_model = "base"
dtype = "float32"
[parameters]
t = [{ filter = "self_attn", value = [0.0, 0.5, 1.0] }, { value = 0.3 }]
[[models]]
model = "base"
[[models]]
model = "ft1"
""",
    "model_stock": """merge_method = "model_stock"
base_model = "base"
dtype = "float32"
[[models]]
model = "ft1"
[[models]]
model = "ft2"
[[models]]
model = "ft3"
""",
}


def toml_to_yaml(text, models_dir):
    """mergekit's YAML for a fixture configuration: the same keys, model paths made absolute."""
    import tomllib

    import yaml

    cfg = tomllib.loads(text)
    if "base_model" in cfg:
        cfg["base_model"] = os.path.join(models_dir, cfg["base_model"])
    for m in cfg.get("models", []):
        m["model"] = os.path.join(models_dir, m["model"])
    return yaml.safe_dump(cfg, sort_keys=False)


def tiny_llama(path, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_config(cfg).to(torch.float32)
    model.save_pretrained(path)
    return model


def finetune(base_dir, path, seed, scale):
    shutil.copytree(base_dir, path)
    sd = safetensors.torch.load_file(os.path.join(base_dir, "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    out = {k: (v + scale * torch.randn(v.shape, generator=g)).contiguous() for k, v in sd.items()}
    safetensors.torch.save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def run_mergekit(config_yaml, workdir, out):
    cfg = os.path.join(workdir, "config.yml")
    with open(cfg, "w") as f:
        f.write(config_yaml)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "mergekit-yaml"), cfg, out, "--no-copy-tokenizer"],
        check=True,
        cwd=workdir,
        env=env,
    )
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    sd = {}
    for f in files:
        sd.update(safetensors.torch.load_file(os.path.join(out, f)))
    return sd


def make_adapters():
    base = AutoModelForCausalLM.from_pretrained(LLAMA, dtype=torch.float32)
    specs = {
        "a1": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        "a2": dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
    }
    for i, (name, spec) in enumerate(specs.items()):
        torch.manual_seed(SEED + 10 + i)
        m = get_peft_model(
            AutoModelForCausalLM.from_pretrained(LLAMA, dtype=torch.float32),
            LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **spec),
        )
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn_like(p) * 0.2)
        m.save_pretrained(os.path.join(OUT, "adapters", name))
        # Record the base as a repository-relative path, not this machine's absolute one.
        cfg_path = os.path.join(OUT, "adapters", name, "adapter_config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["base_model_name_or_path"] = "tests/fixtures/models/llama"
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        os.remove(os.path.join(OUT, "adapters", name, "README.md"))
    model = PeftModel.from_pretrained(base, os.path.join(OUT, "adapters/a1"), adapter_name="a1")
    model.load_adapter(os.path.join(OUT, "adapters/a2"), adapter_name="a2")
    merged = model.merge_and_unload(adapter_names=["a1", "a2"])
    merged.eval()
    with torch.no_grad():
        logits = merged(torch.tensor([FOLD_IDS])).logits.float()
    sd = {k: v.contiguous() for k, v in merged.state_dict().items() if ".layers.0." in k and k.endswith("proj.weight")}
    sd["logits"] = logits.contiguous()
    safetensors.torch.save_file(sd, os.path.join(OUT, "expected/fold.safetensors"))


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "configs"))
    os.makedirs(os.path.join(OUT, "expected"))
    tiny_llama(os.path.join(OUT, "base"), SEED)
    for i, name in enumerate(["ft1", "ft2", "ft3"]):
        finetune(os.path.join(OUT, "base"), os.path.join(OUT, name), SEED + 1 + i, 0.05)
    for name, text in CONFIGS.items():
        with open(os.path.join(OUT, "configs", f"{name}.toml"), "w") as f:
            f.write(text)
        with tempfile.TemporaryDirectory() as tmp:
            sd = run_mergekit(toml_to_yaml(text, OUT), tmp, os.path.join(tmp, "out"))
        safetensors.torch.save_file(sd, os.path.join(OUT, "expected", f"{name}.safetensors"))
    make_adapters()
    prov = {
        "script": "scripts/make_merge_fixtures.py",
        "seed": SEED,
        "fold_ids": FOLD_IDS,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "mergekit": getattr(mergekit, "__version__", None) or __import__("importlib.metadata").metadata.version("mergekit"),
            "safetensors": safetensors.__version__,
        },
        "configs": CONFIGS,
    }
    with open(os.path.join(OUT, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
