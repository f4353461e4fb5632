#!/usr/bin/env python3
"""Golden fixtures for chat-template rendering and assistant-token masks.

For each template in tests/fixtures/chat_templates/ and each test conversation, transformers renders
the conversation (apply_chat_template, jinja2 with Hugging Face's environment), the assistant spans
are computed by incremental rendering, and the text is tokenized with offsets by the Hugging Face
tokenizer. The span rule, identical in lora (crates/train/src/data/chat_template.rs and format.rs):

  start(i) = len(render(messages[:i], add_generation_prompt=True))   (must be a prefix of the whole)
  end(i)   = common prefix length of render(messages[:i+1]) and render(messages)
  trained  = tokens whose start offset lies in [start, end), up to and including the first
             end-of-turn token of the span (EOS ids and <|eot_id|>, <|im_end|>, </s>, ...)

Writes tests/fixtures/chat_tokenizer/ (the fixture BPE plus the templates' special tokens) and
tests/fixtures/chat_golden.json. Needs transformers and tokenizers.
"""
import json
import os
import sys

import tokenizers
import transformers
from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SPECIAL = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "<|endoftext|>"]
END_OF_TURN = ["<|eot_id|>", "<|im_end|>", "<|end|>", "</s>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>"]

TEMPLATES = {
    "llama3": {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"},
    "qwen2_5": {"bos": None, "eos": "<|im_end|>"},
    "mistral": {"bos": "<s>", "eos": "</s>"},
    "smollm2": {"bos": "<|im_start|>", "eos": "<|im_end|>"},
}

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris is the capital of France."}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Colour of the sky?"},
     {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "And grass?"},
     {"role": "assistant", "content": "  Green.  "}],
    [{"role": "user", "content": "Déjà vu — naïve café ✓"},
     {"role": "assistant", "content": "Ünïcödé is fine: 東京"},
     {"role": "user", "content": "Thanks!"},
     {"role": "assistant", "content": "You're welcome.\nBye."}],
    [{"role": "user", "content": "What's the weather?"},
     {"role": "assistant", "content": "Let me check."},
     {"role": "tool", "content": "{\"temp\": 21}"},
     {"role": "assistant", "content": "It is 21 degrees."}],
]


def spans(tok, messages):
    full = tok.apply_chat_template(messages, tokenize=False)
    out = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            start = 0
        else:
            pre = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            assert full.startswith(pre), "template not incremental"
            start = len(pre.encode())
        upto = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        n = 0
        for a, b in zip(upto, full):
            if a != b:
                break
            n += 1
        end = len(full[:n].encode())
        if end > start:
            out.append([start, end])
    return full, out


def main():
    base = Tokenizer.from_file(os.path.join(ROOT, "tokenizer", "tokenizer.json"))
    base.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tdir = os.path.join(ROOT, "chat_tokenizer")
    os.makedirs(tdir, exist_ok=True)
    base.save(os.path.join(tdir, "tokenizer.json"))
    golden = {"provenance": {"script": "scripts/make_data_fixtures.py", "python": sys.version.split()[0],
                             "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
              "cases": []}
    for name, sp in TEMPLATES.items():
        src = open(os.path.join(ROOT, "chat_templates", f"{name}.jinja")).read()
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tdir, "tokenizer.json"), bos_token=sp["bos"],
                                      eos_token=sp["eos"])
        tok.chat_template = src
        eot = {tok.convert_tokens_to_ids(t) for t in END_OF_TURN if t in tok.get_vocab()}
        for ci, conv in enumerate(CONVERSATIONS):
            try:
                text, sps = spans(tok, conv)
            except Exception as e:  # the template refuses this conversation (e.g. Mistral: no system/tool)
                golden["cases"].append({"template": name, "conversation": ci, "error": str(e)})
                continue
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            # Offsets are in characters; lora works in bytes.
            char_to_byte = [0]
            for ch in text:
                char_to_byte.append(char_to_byte[-1] + len(ch.encode()))
            ids = enc["input_ids"]
            offs = [(char_to_byte[s], char_to_byte[e]) for s, e in enc["offset_mapping"]]
            labels = [0] * len(ids)
            for s0, e0 in sps:
                for k, (tid, (s, e)) in enumerate(zip(ids, offs)):
                    if s0 <= s < e0 and e > s:
                        labels[k] = 1
                        if tid in eot:
                            break
            golden["cases"].append({"template": name, "conversation": ci, "text": text, "spans": sps, "ids": ids,
                                    "trained": labels})
    golden["conversations"] = CONVERSATIONS
    golden["templates"] = TEMPLATES
    json.dump(golden, open(os.path.join(ROOT, "chat_golden.json"), "w"), indent=1, ensure_ascii=False)
    print(sum("error" not in c for c in golden["cases"]), "cases,",
          sum("error" in c for c in golden["cases"]), "refused by their template")


if __name__ == "__main__":
    main()
