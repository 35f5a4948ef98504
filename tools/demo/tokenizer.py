"""Byte-level tokenizer of the Routescope demo model.

Vocabulary (261 ids):
  0..255   one token per byte (GPT-2 byte->unicode alphabet, id == byte value)
  256..259 " A", " B", " C", " D"  (the only four BPE merges: "Ġ A" .. "Ġ D"), so that the multiple-choice answer
           after "Answer:" is one token, as with real checkpoints' tokenizers
  260      <|endoftext|>  (eos; also used as bos and pad)

The Hugging Face tokenizer.json written by `write_tokenizer_files` is a BPE model with a ByteLevel pre-tokenizer
(add_prefix_space false, use_regex false: the whole text is one "word"), no normalizer, no post-processor (no
special tokens are added on encode) and a ByteLevel decoder. `encode` below reproduces exactly what the
`tokenizers` library (Rust or @huggingface/tokenizers in JS) produces for that file: tools/demo/check_tokenizer.mjs
verifies it.
"""
import json
import os

EOS = "<|endoftext|>"
EOS_ID = 260
LETTER_IDS = {"A": 256, "B": 257, "C": 258, "D": 259}  # " A" .. " D"
VOCAB_SIZE = 261
MODEL_MAX_LENGTH = 512


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BYTE_CHARS = bytes_to_unicode()
MERGE_RIGHT = {ord(c): i for c, i in LETTER_IDS.items()}  # byte of A..D -> merged id


def _encode_plain(text):
    ids = []
    for b in text.encode("utf-8"):
        if ids and ids[-1] == 32 and b in MERGE_RIGHT:
            ids[-1] = MERGE_RIGHT[b]  # "Ġ" + "A" -> "ĠA": the only merges; they cannot overlap or chain
        else:
            ids.append(b)
    return ids


def encode(text):
    """Token ids of `text` (no special token is added; a literal <|endoftext|> in the text becomes id 260)."""
    ids = []
    parts = text.split(EOS)
    for i, part in enumerate(parts):
        if i > 0:
            ids.append(EOS_ID)
        ids.extend(_encode_plain(part))
    return ids


_ID_BYTES = {i: bytes([i]) for i in range(256)}
_ID_BYTES.update({i: b" " + c.encode() for c, i in LETTER_IDS.items()})
_ID_BYTES[EOS_ID] = EOS.encode()


def decode(ids):
    return b"".join(_ID_BYTES[i] for i in ids).decode("utf-8", errors="replace")


def vocab():
    v = {BYTE_CHARS[b]: b for b in range(256)}
    for c, i in LETTER_IDS.items():
        v[BYTE_CHARS[32] + c] = i
    v[EOS] = EOS_ID
    return v


def tokenizer_json():
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": EOS_ID, "content": EOS, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab(),
            "merges": [BYTE_CHARS[32] + " " + c for c in "ABCD"],
        },
    }


def tokenizer_config_json():
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(EOS_ID): {"content": EOS, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True}
        },
        "bos_token": EOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def generation_config_json():
    return {
        "_from_model_config": False,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
        "do_sample": False,
        "max_new_tokens": 32,
    }


def write_tokenizer_files(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name, obj in (("tokenizer.json", tokenizer_json()), ("tokenizer_config.json", tokenizer_config_json()),
                      ("generation_config.json", generation_config_json())):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    import sys
    write_tokenizer_files(sys.argv[1] if len(sys.argv) > 1 else "media/demo-model")
