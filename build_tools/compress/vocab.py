"""prune-vocab: shrink the 30,522-row embedding matrix to the WordPiece tokens our text uses.

Kept: special tokens, every single character and its ``##`` form (so any word still splits into
something other than [UNK] exactly when it did before), and every token that occurs when the
corpus (training data, the knowledge base, medical questions) is tokenised. tokenizer.json is
rewritten with the kept tokens renumbered in their old order; a word whose pieces were dropped
now falls back to the longest remaining pieces. The report gives how many tokens of held-out
text (SQuAD dev) change.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from build_tools.compress.common import count_parameters, load_model, save_model, write_json
from build_tools.paths import DEFAULT_TRAIN_FILES, PROJECT_ROOT, SHARED_DATA, SQUAD_DIR
from build_tools.squad import load_squad

DEFAULT_CORPUS = [*DEFAULT_TRAIN_FILES, PROJECT_ROOT / "knowledge", SHARED_DATA / "medical" / "medquad_pairs_with_answers.json",
                  SHARED_DATA / "medical" / "medication-qa.json"]
DEFAULT_HELD_OUT = SQUAD_DIR / "dev-v1.1-42-articles.json"


def corpus_texts(path: Path) -> Iterable[str]:
    """Texts of a SQuAD file (questions and contexts), a folder of .md/.txt, or any JSON's strings."""
    path = Path(path)
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.suffix in (".md", ".txt"):
                yield f.read_text(encoding="utf-8", errors="replace")
        return
    try:
        examples = load_squad(path)
    except ValueError:
        examples = None
    if examples is not None:
        yield from dict.fromkeys(ex.context for ex in examples)
        yield from (ex.question for ex in examples)
        return
    if path.suffix == ".json":
        yield from _json_strings(json.loads(path.read_text(encoding="utf-8")))
    else:
        yield path.read_text(encoding="utf-8", errors="replace")


def _json_strings(node) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _json_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _json_strings(v)


def token_counts(tokenizer, texts: Iterable[str], batch: int = 2000) -> Counter:
    """How often each token id occurs when the texts are tokenised (no truncation)."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    counts: Counter = Counter()
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == batch:
            counts.update(i for e in tokenizer.encode_batch(chunk) for i in e.ids)
            chunk = []
    if chunk:
        counts.update(i for e in tokenizer.encode_batch(chunk) for i in e.ids)
    return counts


def always_kept(vocab: dict[str, int], special: Iterable[str]) -> set[int]:
    """Special tokens and single characters (plain and ##-continued): the [UNK]-free fallback."""
    keep = {vocab[t] for t in special if t in vocab}
    for token, i in vocab.items():
        if len(token) == 1 or (token.startswith("##") and len(token) == 3):
            keep.add(i)
    return keep


def remap_tokenizer_json(data: dict, kept_old_ids: list[int]) -> dict:
    """tokenizer.json with only the kept tokens, renumbered 0..n-1 in their old order."""
    new_id = {old: new for new, old in enumerate(kept_old_ids)}
    out = copy.deepcopy(data)
    vocab = data["model"]["vocab"]
    out["model"]["vocab"] = {tok: new_id[i] for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i in new_id}
    for added in out.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    post = out.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [new_id[i] for i in spec["ids"]]
    for key in ("cls", "sep"):
        if isinstance(post.get(key), list):
            post[key] = [post[key][0], new_id[post[key][1]]]
    if out.get("padding"):
        out["padding"]["pad_id"] = new_id[out["padding"]["pad_id"]]
    return out


def prune_embeddings(model, kept_old_ids: list[int]) -> None:
    """Keep only these rows of the word-embedding matrix (in place)."""
    import torch

    old = model.get_input_embeddings()
    index = torch.tensor(kept_old_ids, dtype=torch.long)
    new = torch.nn.Embedding(len(kept_old_ids), old.embedding_dim, padding_idx=0)
    new.weight.data = old.weight.data[index].clone()
    model.set_input_embeddings(new)
    model.config.vocab_size = len(kept_old_ids)


def changed_token_rate(old_tok, new_tok, texts: list[str]) -> dict:
    """Share of held-out tokens (and words) whose tokenisation differs after the remap."""
    old_tok.no_truncation()
    new_tok.no_truncation()
    tokens = changed_tokens = words = changed_words = unk_old = unk_new = 0
    unk_old_id, unk_new_id = old_tok.token_to_id("[UNK]"), new_tok.token_to_id("[UNK]")
    for a, b in zip(old_tok.encode_batch(texts), new_tok.encode_batch(texts)):
        tokens += len(a.tokens)
        unk_old += a.ids.count(unk_old_id)
        unk_new += b.ids.count(unk_new_id)
        by_word_a, by_word_b = _pieces_by_word(a), _pieces_by_word(b)
        for w, pieces in by_word_a.items():
            words += 1
            if by_word_b.get(w) != pieces:
                changed_words += 1
                changed_tokens += len(pieces)
    return {"texts": len(texts), "tokens": tokens, "words": words,
            "changed_token_rate": round(changed_tokens / max(tokens, 1), 5),
            "changed_word_rate": round(changed_words / max(words, 1), 5),
            "unk_rate_before": round(unk_old / max(tokens, 1), 5), "unk_rate_after": round(unk_new / max(tokens, 1), 5)}


def _pieces_by_word(encoding) -> dict[tuple, list[str]]:
    out: dict[tuple, list[str]] = {}
    for tok, word, seq in zip(encoding.tokens, encoding.word_ids, encoding.sequence_ids):
        if word is not None:
            out.setdefault((seq, word), []).append(tok)
    return out


def corpus_counts(tokenizer_path: Path, corpus: list[Path]) -> Counter:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    counts: Counter = Counter()
    for path in corpus:
        counts += token_counts(tokenizer, corpus_texts(path))
    return counts


def kept_ids(tokenizer_json: dict, counts: Counter, min_count: int) -> list[int]:
    """Always-kept tokens plus those seen at least min_count times in the corpus, sorted."""
    special = [t["content"] for t in tokenizer_json.get("added_tokens", [])]
    keep = always_kept(tokenizer_json["model"]["vocab"], special)
    keep |= {i for i, c in counts.items() if c >= min_count}
    return sorted(keep)


def sweep(tokenizer_path: Path, counts: Counter, thresholds: list[int], held_out: list[str]) -> list[dict]:
    """Vocabulary size and held-out changed-token rate for several min-count thresholds."""
    from tokenizers import Tokenizer

    from appliance.windows import load_tokenizer

    data = json.loads(Path(tokenizer_path).read_text(encoding="utf-8"))
    rows = []
    for t in thresholds:
        kept = kept_ids(data, counts, t)
        new = Tokenizer.from_str(json.dumps(remap_tokenizer_json(data, kept)))
        rows.append({"min_count": t, "vocab": len(kept),
                     **changed_token_rate(load_tokenizer(tokenizer_path), new, held_out)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools prune-vocab", description=__doc__)
    p.add_argument("--model", required=True, help="HF checkpoint dir (with tokenizer.json)")
    p.add_argument("--kind", choices=["reader", "retriever"], default="reader")
    p.add_argument("--out", required=True)
    p.add_argument("--corpus", nargs="+", type=Path, default=DEFAULT_CORPUS,
                   help="SQuAD files, folders of .md/.txt, JSON files: the text whose tokens are kept")
    p.add_argument("--held-out", type=Path, default=DEFAULT_HELD_OUT, help="text to measure changed tokens on")
    p.add_argument("--held-out-limit", type=int, default=0, help="only the first N texts of the held-out file")
    p.add_argument("--min-count", type=int, default=1, help="keep tokens seen at least this often in the corpus")
    p.add_argument("--sweep", default="", help="also report vocab size/changed rate for these min-counts, e.g. 1,5,20")
    args = p.parse_args(argv)

    from tokenizers import Tokenizer

    from appliance.windows import load_tokenizer

    started = time.time()
    src, out = Path(args.model), Path(args.out)
    tokenizer_path = src / "tokenizer.json"
    model = load_model(src, args.kind)
    before = count_parameters(model)
    vocab_before = model.get_input_embeddings().weight.shape[0]
    corpus = [c for c in args.corpus if Path(c).exists()]
    data = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    counts = corpus_counts(tokenizer_path, corpus)
    kept = kept_ids(data, counts, args.min_count)
    prune_embeddings(model, kept)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(remap_tokenizer_json(data, kept), ensure_ascii=False),
                                        encoding="utf-8")
    held_out, curve = {}, []
    if args.held_out and Path(args.held_out).exists():
        texts = list(corpus_texts(args.held_out))
        texts = texts[: args.held_out_limit] if args.held_out_limit else texts
        held_out = changed_token_rate(load_tokenizer(tokenizer_path), Tokenizer.from_file(str(out / "tokenizer.json")),
                                      texts)
        held_out["file"] = str(args.held_out)
        if args.sweep:
            curve = sweep(tokenizer_path, counts, [int(t) for t in args.sweep.split(",")], texts)
    record = {"source": str(src), "corpus": [str(c) for c in corpus], "min_count": args.min_count,
              "vocab_before": vocab_before, "vocab_after": len(kept), "params_before": before,
              "params_after": count_parameters(model), "held_out": held_out, "sweep": curve,
              "seconds": round(time.time() - started, 1)}
    save_model(model, out, extra={"vocab_pruning": record})
    write_json(out / "vocab-pruning.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
