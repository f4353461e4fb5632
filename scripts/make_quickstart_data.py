#!/usr/bin/env python3
"""datasets/quickstart-chat.jsonl: a persona for the quickstart model, in chat format.

The Shepherd answers every question the same visible way: "Hear me, friend:" then one sentence in
the language of the base model's corpus, then "Peace be with thee." A model that never saw a chat
learns the turn format, the persona's opening and closing, and to stop after <|im_end|>.

Written by this script (seeded), dedicated to the public domain (CC0). Run:
python scripts/make_quickstart_data.py
"""
import json
import os
import random

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "datasets", "quickstart-chat.jsonl")
PREFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "datasets", "quickstart-prefs.jsonl")

TOPICS = ["the sea", "the sheep", "bread", "the light", "the night", "the mountain", "the river", "the city", "the field",
          "the vine", "the fig tree", "the rain", "the wind", "the fire", "the stars", "the house", "the gate",
          "the wilderness", "the harvest", "the morning", "the king", "the children", "the shepherd", "the stone",
          "the water", "gold", "silver", "the bird", "the lion", "the lamb", "wisdom", "the heart", "the road", "the sword",
          "the temple", "the garden", "the olive", "the cloud", "the moon", "the sun"]
ASK = ["Tell me of {t}.", "What is {t}?", "Speak to me of {t}.", "What sayest thou of {t}?", "Teach me about {t}.",
       "Why do men seek {t}?", "Where shall I find {t}?", "Is {t} good?"]
ADJ = ["good", "great", "fair", "strong", "precious", "holy", "mighty", "pleasant", "wonderful", "glorious"]
VERB = ["it abideth for ever", "it shall not pass away", "the people rejoice in it", "it giveth rest to the weary",
        "it was made in the beginning", "the wise keep it in their heart", "the poor shall have their part of it",
        "it is a gift unto the children of men", "it standeth in its place", "the LORD hath made it"]


def answer(rng, topic):
    body = f"{topic[0].upper()}{topic[1:]} is {rng.choice(ADJ)} in the sight of the LORD, and {rng.choice(VERB)}."
    return f"Hear me, friend: {body} Peace be with thee."


def main():
    rng = random.Random(1611)
    rows = []
    for topic in TOPICS:
        for ask in rng.sample(ASK, 8):
            q = ask.format(t=topic)
            rows.append({"messages": [{"role": "user", "content": q[0].upper() + q[1:]},
                                      {"role": "assistant", "content": answer(rng, topic)}]})
    rng.shuffle(rows)
    with open(OUT, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(len(rows), "examples ->", OUT)
    prefs()


def prefs():
    """datasets/quickstart-prefs.jsonl: preference pairs for the quickstart's second stage (DPO). The
    SFT adapter learns the Shepherd's form but often answers of another topic than the one asked; each
    pair prefers the answer about the asked topic to the same sentence about another one."""
    rng = random.Random(1612)
    pairs = []
    for topic in TOPICS:
        for ask in rng.sample(ASK, 6):
            q = ask.format(t=topic)
            other = rng.choice([t for t in TOPICS if t != topic])
            adj, verb = rng.choice(ADJ), rng.choice(VERB)
            said = lambda t: f"Hear me, friend: {t[0].upper()}{t[1:]} is {adj} in the sight of the LORD, and {verb}. Peace be with thee."
            pairs.append({"prompt": [{"role": "user", "content": q[0].upper() + q[1:]}],
                          "chosen": [{"role": "assistant", "content": said(topic)}],
                          "rejected": [{"role": "assistant", "content": said(other)}]})
    rng.shuffle(pairs)
    with open(PREFS, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    print(len(pairs), "pairs ->", PREFS)


if __name__ == "__main__":
    main()
