#!/usr/bin/env python3
"""Makes the tokenizer fixtures of KATEnvTests with Hugging Face `tokenizers` (not run in CI).

    pip install tokenizers transformers
    python3 Tests/KATEnvTests/Fixtures/make_tokenizers.py

Writes into Tests/KATEnvTests/Fixtures/tokenizers/:
  corpus.jsonl            awkward text, one {"text": ...} a line
  <name>/                 a model directory's tokenizer files (and a config.json with the
                          special ids), one per tokenizer below
  expected.json           per tokenizer: ids, decoded text (with and without specials) and
                          pre-tokenizer pieces of every corpus line, and decodings of id
                          sequences that include invalid UTF-8 and unknown ids
  pretokenizer_classes.txt  every Unicode scalar through five templates under the GPT-2,
                          Qwen2 and Llama 3 split patterns: ranges of scalars that split alike

The tokenizers are BPEs of a few hundred tokens trained on a small corpus:
  gpt2-json    ByteLevel pre-tokenizer with GPT-2's pattern, tokenizer.json (transformers' save)
  gpt2-files   the same model as GPT-2's vocab.json + merges.txt
  gpt2-prefix  ByteLevel with add_prefix_space, added tokens with lstrip/rstrip/single_word
  qwen2        NFC normalizer, Split with Qwen2's pattern, then ByteLevel without its pattern
  llama3       Split with Llama 3's pattern ((?i:...) contractions, digits in threes), ignore_merges
  task         GPT-2 style, trained on the built-in tasks' text (for training runs)
"""
import json
import os
import random
import shutil

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizers")

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

CORPUS = [
    "Hello, world! It's a test of the tokenizer.",
    "I'm sure you'll see they're here; we've done it, he'd go, it's fine, don't.",
    "I'M SURE YOU'LL SEE THEY'RE HERE; WE'VE DONE IT, HE'D GO, IT'S FINE, DON'T.",
    "Mixed: It'S, you'Ll, they'rE, and the long s: it'\u017f, WE'\u017f; curly: it\u2019s.",
    "na\u00efve caf\u00e9 r\u00e9sum\u00e9 \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u03a3\u03af\u03c3\u03c5\u03c6\u03bf\u03c2",
    "emoji: \U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family, \U0001F3F3\ufe0f\u200d\U0001F308 flag, \U0001F44D\U0001F3FD thumbs, \U0001F1EF\U0001F1F5!",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\u4e2d\u6587\u5b57\u7b26\u548c\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\u3002",
    "combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0359\u0300\u0301a\u0334lgo \u0301alone",
    "a    b     c  ",
    "   leading and trailing   ",
    "col1\tcol2\t\tcol3\n\nnext line\n",
    "line one\r\nline two\r\n\r\nend\r",
    "1234567890 3.14159 12,345,678 x=42+17 \uff12\uff13 \u0663\u0664\u0665 \u00bd \u00b2 \u2167",
    "before<|endoftext|>after <|endoftext|> <|im_start|>user\nhi<|im_end|>\n",
    "<|begin_of_text|>text<|eot_id|> and <|end_of_text|>",
    "mask: a <mask> b  <mask>  c<mask>d [[tool]] x[[tool]]y [[tool]]z",
    "odd space: a\u000bb c\u0085d e\u00a0f g\u2028h i\u3000j k\u001cl m\u200bn",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "23+45=68",
    "times 3 then add 5",
    "x 3 * 5 +",
    "",
    "   ",
    "\n",
    "\r\n\r\n",
    " \n \n",
    "!!!??? ... --- ''' \"quoted\"",
    "\u01c4ungla \u01c5ungla \u1e9e\u00df \u212a kelvin \u0130stanbul",
]

TRAIN = CORPUS * 3 + [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "\u6625\u7720\u4e0d\u89ba\u6681\uff0c\u8655\u8655\u805e\u557c\u9ce5\u3002",
    "Numbers 100 200 300 400 1000 2024 3.5 0.25",
] * 4


def task_text():
    ops = [f"add {k}" for k in range(1, 10)] + [f"sub {k}" for k in range(1, 10)] + [f"times {k}" for k in range(2, 10)]
    code = [f"{k} +" for k in range(1, 10)] + [f"{k} -" for k in range(1, 10)] + [f"{k} *" for k in range(2, 10)]
    out = []
    for a in range(len(ops)):
        for b in range(len(ops)):
            out.append(f"{ops[a]} then {ops[b]}")
            out.append(f"x {code[a]} {code[b]}")
    for a in range(10, 100):
        for b in range(10, 100, 7):
            out.append(f"{a}+{b}={a + b}")
    return out


def train(pre, vocab_size, specials, text, normalizer=None):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=specials, show_progress=False)
    tok.train_from_iterator(text, trainer)
    return tok


def save_dir(name, tok, config, tokenizer_config=None, files=False):
    d = os.path.join(HERE, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    if files:
        tok.model.save(d)
    else:
        tok.save(os.path.join(d, "tokenizer.json"))
    if tokenizer_config is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(tokenizer_config, f, indent=2, ensure_ascii=False)
    cfg = {"model_type": "gpt2", "vocab_size": tok.get_vocab_size(), "n_positions": 64, "n_embd": 8, "n_layer": 1, "n_head": 2}
    cfg.update(config)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def main():
    os.makedirs(HERE, exist_ok=True)
    with open(os.path.join(HERE, "corpus.jsonl"), "w") as f:
        for t in CORPUS:
            f.write(json.dumps({"text": t}) + "\n")

    toks = {}
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    gpt2 = train(bl, 400, ["<|endoftext|>"], TRAIN)
    eot = gpt2.token_to_id("<|endoftext|>")
    save_dir("gpt2-json", gpt2, {"bos_token_id": eot, "eos_token_id": eot},
             {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "add_prefix_space": False, "clean_up_tokenization_spaces": False})
    toks["gpt2-json"] = gpt2
    save_dir("gpt2-files", gpt2, {"bos_token_id": eot, "eos_token_id": eot}, files=True)
    # The reference for GPT-2's two files: the BPE they make with GPT-2's pre-tokenizer,
    # and <|endoftext|> as transformers adds it.
    d = os.path.join(HERE, "gpt2-files")
    files = Tokenizer(models.BPE.from_file(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")))
    files.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    files.decoder = decoders.ByteLevel()
    files.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    toks["gpt2-files"] = files

    prefix = Tokenizer.from_str(gpt2.to_str())
    prefix.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    prefix.add_special_tokens([AddedToken("<mask>", special=True, lstrip=True, rstrip=True, normalized=False)])
    prefix.add_tokens([AddedToken("[[tool]]", single_word=True)])
    save_dir("gpt2-prefix", prefix, {"eos_token_id": eot, "sep_token_id": prefix.token_to_id("<mask>")},
             {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "add_prefix_space": True,
              "clean_up_tokenization_spaces": False})
    toks["gpt2-prefix"] = prefix

    qpre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    qwen = train(qpre, 420, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], TRAIN, normalizer=normalizers.NFC())
    save_dir("qwen2", qwen, {"bos_token_id": None, "eos_token_id": qwen.token_to_id("<|endoftext|>")},
             {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "clean_up_tokenization_spaces": False})
    toks["qwen2"] = qwen

    lpre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    llama = train(lpre, 420, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], TRAIN)
    j = json.loads(llama.to_str())
    j["model"]["ignore_merges"] = True
    llama = Tokenizer.from_str(json.dumps(j))
    bot, eos, eot_id = (llama.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"))
    save_dir("llama3", llama, {"bos_token_id": bot, "eos_token_id": [eos, eot_id]},
             {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
              "clean_up_tokenization_spaces": False})
    toks["llama3"] = llama

    task = train(bl, 300, ["<|endoftext|>"], task_text())
    teot = task.token_to_id("<|endoftext|>")
    save_dir("task", task, {"bos_token_id": teot, "eos_token_id": teot},
             {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
              "clean_up_tokenization_spaces": False})
    toks["task"] = task

    rng = random.Random(7)
    expected = {}
    for name, tok in toks.items():
        v = tok.get_vocab_size(with_added_tokens=True)
        entry = {"vocab_size": v, "encode": [], "decode": [], "decode_skip": [], "pieces": [], "random_decode": []}
        for t in CORPUS:
            ids = tok.encode(t, add_special_tokens=False).ids
            entry["encode"].append(ids)
            entry["decode"].append(tok.decode(ids, skip_special_tokens=False))
            entry["decode_skip"].append(tok.decode(ids, skip_special_tokens=True))
            entry["pieces"].append([p for p, _ in tok.pre_tokenizer.pre_tokenize_str(t)])
        for _ in range(40):
            ids = [rng.randrange(0, v + 3) for _ in range(rng.randrange(1, 12))]
            entry["random_decode"].append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                                           "text_skip": tok.decode(ids, skip_special_tokens=True)})
        expected[name] = entry
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=True)

    # transformers must read each directory as the same tokenizer.
    try:
        from transformers import AutoTokenizer
    except ImportError:
        AutoTokenizer = None
    if AutoTokenizer is not None:
        for name in toks:
            auto = AutoTokenizer.from_pretrained(os.path.join(HERE, name))
            for t, ids in zip(CORPUS, expected[name]["encode"]):
                got = auto.encode(t, add_special_tokens=False)
                assert got == ids, (name, t, got, ids)
        print("transformers.AutoTokenizer agrees on every fixture")

    sweep()


def sweep():
    """Ranges of scalars that every template splits alike under the three patterns."""
    pats = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in (GPT2, QWEN2, LLAMA3)]
    sigs, table, ranges = {}, [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        parts = []
        for p in pats:
            for t in (c + c + "a", "1" + c + "1", " " + c, "'" + c + " x", c + "\n"):
                parts.append(",".join(str(e - s) for _, (s, e) in p.pre_tokenize_str(t)))
        sig = "|".join(parts)
        if sig not in sigs:
            sigs[sig] = len(table)
            table.append(sig)
        k = sigs[sig]
        if ranges and ranges[-1][2] == k and ranges[-1][1] == cp - 1 - (0x800 if cp == 0xE000 else 0):
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, k])
    with open(os.path.join(HERE, "pretokenizer_classes.txt"), "w") as f:
        f.write("# templates: c c a | 1 c 1 | space c | ' c space x | c newline; patterns GPT-2, Qwen2, Llama 3\n")
        f.write("# signatures: piece lengths in scalars, per template and pattern\n")
        for k, s in enumerate(table):
            f.write(f"sig {k} {s}\n")
        for lo, hi, k in ranges:
            f.write(f"{lo:x} {hi:x} {k}\n")


if __name__ == "__main__":
    main()
