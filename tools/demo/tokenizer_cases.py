#!/usr/bin/env python3
"""Writes JSONL {text, ids} cases (Python tokenisation) for tools/demo/check_tokenizer.mjs: a few hundred corpus
strings (training examples of every kind and skill, the task-suite prompts) plus edge cases.

    /usr/bin/python3 tools/demo/tokenizer_cases.py > .cache/demo/tok_cases.jsonl
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
import tokenizer as tok  # noqa: E402


def cases(n_train=300):
    texts = [e[0] for e in corpus.training_examples(seed=777, n=n_train)]
    rng = random.Random(5)
    here = os.path.dirname(os.path.abspath(__file__))
    tasks = os.path.join(here, "..", "..", "media", "tasks")
    for name in ("eval.jsonl", "reference.jsonl", "generative.jsonl"):
        p = os.path.join(tasks, name)
        if os.path.exists(p):
            items = corpus.read_jsonl(p)
            texts += [it["prompt"] for it in rng.sample(items, min(40, len(items)))]
    joined = texts[0] + tok.EOS + texts[1] + tok.EOS
    texts += [
        joined, tok.EOS, tok.EOS + "Q: What is 1 + 1?", " A", "  A", " A B C D", "Answer: C", "A. B. C. D.",
        "Answer:  D", " AB", "  ", "", "\n\nA", "tab\there", "héllo wörld ✓ 日本", "emoji 🙂 ok", "<|endoftext",
        "x<|endoftext|><|endoftext|>y", "Question: What is 47 + 38?\nA. 75\nB. 85\nC. 86\nD. 95\nAnswer: B",
    ]
    return [t for t in texts if t != ""]


if __name__ == "__main__":
    for t in cases():
        sys.stdout.write(json.dumps({"text": t, "ids": tok.encode(t)}, ensure_ascii=False) + "\n")
