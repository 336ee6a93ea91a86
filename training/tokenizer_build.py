"""Train a CLIP-format byte-level BPE tokenizer from a list of texts, locally.

CLIP's tokenizer (Radford et al. 2021) is GPT-2's byte-level BPE with an end-of-word
suffix ``</w>`` and lower-casing. We build the same format (``vocab.json`` +
``merges.txt``) so that ``transformers.CLIPTokenizer`` loads it unchanged: the tiny test
models and the bundled demo model use it, and no hub access is needed.
"""
from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import regex
from transformers import CLIPTokenizer

# CLIP's pre-tokenisation pattern (letters, single digits, punctuation runs).
_WORD_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _word_symbols(word: str) -> tuple[str, ...]:
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def train_clip_bpe(texts: list[str], vocab_size: int = 1000) -> tuple[dict[str, int], list[str]]:
    """Learn BPE merges on ``texts``; returns (vocab, merges) in CLIP's format.

    The vocabulary always holds all 256 byte symbols with and without ``</w>``, so any
    text can be tokenized; merges are added greedily by pair frequency (ties broken by
    the pair's text, so training is deterministic) until ``vocab_size`` is reached.
    """
    base = list(bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    if vocab_size < len(vocab_list) + 2:
        raise ValueError(f"vocab_size must be at least {len(vocab_list) + 2}, got {vocab_size}")
    words = Counter(_word_symbols(w) for t in texts for w in _WORD_PATTERN.findall(t.lower()))
    merges: list[str] = []
    while len(vocab_list) + 2 < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(f"{best[0]} {best[1]}")
        vocab_list.append(best[0] + best[1])
        words = Counter({_merge(symbols, best): c for symbols, c in words.items()})
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def build_clip_tokenizer(
    texts: list[str], folder: str | Path, vocab_size: int = 1000, max_length: int = 77
) -> CLIPTokenizer:
    """Train on ``texts``, write ``vocab.json``/``merges.txt`` into ``folder``, load it.

    Going through files (not the constructor) keeps one format for every
    ``transformers`` version: the same files SD's own ``tokenizer/`` folder holds.
    """
    vocab, merges = train_clip_bpe(texts, vocab_size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer",
              "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder)
