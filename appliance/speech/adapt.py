"""Adapt speech recognition to the knowledge base, at index time.

A general English model mishears domain words ("amoxicillin", "tailstock", "preheat") or lacks
them. From the KB text plus question phrasings we build: a trigram language model (ARPA) and a
pronunciation dictionary for pocketsphinx, and a word list for vosk. Words the stock dictionary
lacks get pronunciations from espeak-ng's phonemiser, mapped from IPA to the CMU phone set.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import is_disk_error
from appliance.schema import Passage

log = logging.getLogger(__name__)
FOLDER = "asr"  # where the index step puts the adaptation inside an index version

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
DISCOUNT = 0.7  # absolute discounting constant for bigrams and trigrams

# How people ask; the KB gives the content words, these give the question frames around them.
QUESTION_FRAMES = """
how long should i | how long do i | how long does it take to | how often should i | how much should i
how many | how do i | how can i | what should i do if | what do i do if | what happens if i
what does it mean when | what is the | what are the | what does the | when should i | when do i
can i | can you | should i | is it safe to | is it ok to | do i need to | where is the | where do i
why does the | why is the | which | what if i forgot | i forgot to | i missed | tell me about
what is the maximum | what is the minimum | what temperature | how hot | how cold | what setting
hey appliance | what does the manual say about | what does the guide say about | my | the | a | an
""".replace("\n", " ")

IPA_TO_CMU = {
    "eɪ": "EY", "aɪ": "AY", "ɔɪ": "OY", "aʊ": "AW", "oʊ": "OW", "əʊ": "OW", "ɪə": "IH R", "eə": "EH R",
    "ʊə": "UH R", "iː": "IY", "i": "IY", "ɪ": "IH", "ᵻ": "IH", "ɛ": "EH", "e": "EH", "æ": "AE", "ɑː": "AA",
    "ɑ": "AA", "ɒ": "AA", "ɔː": "AO", "ɔ": "AO", "oː": "AO", "o": "OW", "ʊ": "UH", "uː": "UW", "u": "UW",
    "ʌ": "AH", "ə": "AH", "ɐ": "AH", "ɚ": "ER", "ɜː": "ER", "ɜ": "ER", "a": "AE", "aː": "AA",
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "ɡ": "G", "f": "F", "v": "V", "θ": "TH",
    "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "m": "M", "n": "N", "ŋ": "NG", "l": "L",
    "w": "W", "j": "Y", "ɹ": "R", "r": "R", "tʃ": "CH", "dʒ": "JH", "ɾ": "T", "ʔ": "T", "x": "K", "ɬ": "L",
}
_STRIP = dict.fromkeys(map(ord, "ˈˌ\u200d\u0329\u032f-"), None)


@dataclass(frozen=True)
class Adaptation:
    """Paths of the adaptation files in an index version (absent files: no adaptation)."""
    directory: Path

    @property
    def lm(self) -> Path:
        return self.directory / "kb.lm"

    @property
    def dictionary(self) -> Path:
        return self.directory / "kb.dict"

    @property
    def words(self) -> Path:
        return self.directory / "kb.words.json"

    @property
    def vocabulary(self) -> Path:
        """Terms and codes for Whisper's bias and code normalisation (speech.vocabulary)."""
        return self.directory / "kb.vocab.json"

    def exists(self) -> bool:
        return self.lm.is_file() and self.dictionary.is_file() and self.words.is_file()


def pocketsphinx_model_dir() -> Path:
    """The en-us model inside the pocketsphinx wheel (acoustic model, stock LM and CMUdict)."""
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us"


def adapt_index_version(passages: list[Passage], version_dir: Path) -> dict | None:
    """The index step (``appliance index`` runs it on each new version before committing it): the
    recogniser's KB language model, dictionary and vocabulary. An index without them still answers
    typed questions, so a failure other than the disk's skips the step with a warning."""
    out_dir = version_dir / FOLDER
    headings = sorted({h for p in passages for h in (p.doc_title, *p.section)})
    try:
        record = build_adaptation([p.text for p in passages], headings,
                                  pocketsphinx_model_dir() / "cmudict-en-us.dict", out_dir)
    except (OSError, ImportError, ValueError, subprocess.SubprocessError) as exc:
        if is_disk_error(exc):
            raise  # a full or read-only disk fails the build: never commit an index without its adaptation
        log.warning("speech adaptation skipped: %s", exc)
        shutil.rmtree(out_dir, ignore_errors=True)
        return None
    return {"dir": FOLDER, **record}


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """Cardinal English for 0..999,999 ("1440" → "one thousand four hundred forty")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def spoken_form(text: str) -> str:
    """How text is said: numbers as words, codes letter by letter ("E05" → "e zero five")."""
    def code(match: re.Match) -> str:
        letters, digits = match.group(1), match.group(2)
        said_digits = " ".join(_ONES[int(d)] for d in digits) if digits.startswith("0") or len(digits) > 4 \
            else number_words(int(digits))
        return f" {' '.join(letters.lower())} {said_digits} "

    text = re.sub(r"\b([A-Za-z]{1,3})-?(\d+)\b", code, text)
    text = re.sub(r"(\d+)\.(\d+)", lambda m: f"{m.group(1)} point {' '.join(_ONES[int(d)] for d in m.group(2))}", text)
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} " if len(m.group()) <= 6 else
                  " " + " ".join(_ONES[int(d)] for d in m.group()) + " ", text)
    return text


def sentences_for_lm(texts: Iterable[str]) -> list[list[str]]:
    """Lower-cased word sequences, one per sentence or line, with numbers and codes as spoken."""
    out = []
    for text in texts:
        for piece in re.split(r"[.!?;:\n]+", spoken_form(text).lower()):
            words = WORD.findall(piece)
            if words:
                out.append(words)
    return out


def question_sentences(headings: Iterable[str]) -> list[list[str]]:
    """Question frames, alone and around each section heading, so "how do i <heading>" is likely."""
    frames = [f.split() for f in QUESTION_FRAMES.split("|") if f.strip()]
    out = list(frames)
    for heading in headings:
        words = WORD.findall(spoken_form(heading).lower())
        if words:
            out.extend(frame + words for frame in frames[:12])
    return out


def ipa_to_cmu(ipa: str) -> list[str]:
    """Greedy longest-match mapping of espeak-ng IPA (phonemes separated by spaces) to CMU phones."""
    phones: list[str] = []
    for token in ipa.translate(_STRIP).split():
        i = 0
        while i < len(token):
            for size in (2, 1):
                piece = token[i:i + size]
                if piece in IPA_TO_CMU:
                    phones.extend(IPA_TO_CMU[piece].split())
                    i += size
                    break
            else:
                i += 1  # length marks and symbols with no CMU counterpart
    return phones


def espeak_pronunciations(words: list[str], voice: str = "en-us") -> dict[str, list[str]]:
    """Pronunciations from espeak-ng (one process for all words); {} when it is not installed."""
    binary = shutil.which("espeak-ng") or shutil.which("espeak")
    if not binary or not words:
        return {}
    result = subprocess.run([binary, "-q", "-v", voice, "--ipa", "--sep= "], input="\n".join(words) + "\n",
                            capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or len(lines) != len(words):
        log.warning("espeak-ng gave %d pronunciations for %d words; skipping them", len(lines), len(words))
        return {}
    return {w: p for w, line in zip(words, lines) if (p := ipa_to_cmu(line))}


def read_dictionary(path: Path) -> dict[str, str]:
    """CMU-style dictionary: word (lower case, alternates as word(2)) → phones."""
    entries: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split(maxsplit=1)
            if len(parts) == 2 and parts[0] not in entries:
                entries[parts[0]] = parts[1].strip()
    return entries


def arpa_trigram(sentences: list[list[str]]) -> str:
    """A backoff trigram LM with absolute discounting, as ARPA text."""
    uni, bi, tri = Counter(), Counter(), Counter()
    for words in sentences:
        seq = ["<s>", *words, "</s>"]
        uni.update(seq[1:])
        bi.update(zip(seq, seq[1:]))
        tri.update(zip(seq, seq[1:], seq[2:]))
    vocab = sorted(set(uni) | {"<s>"})
    total = sum(uni.values())
    p1 = {w: (uni[w] + 1) / (total + len(vocab) - 1) for w in vocab if w != "<s>"}  # add-one; <s> is never predicted

    def higher(counts: Counter, lower) -> tuple[dict, dict]:
        by_context: dict[tuple, list] = defaultdict(list)
        for gram, c in counts.items():
            by_context[gram[:-1]].append((gram[-1], c))
        probs, backoff = {}, {}
        for ctx, followers in by_context.items():
            n = sum(c for _, c in followers)
            seen = {w: (c - DISCOUNT) / n for w, c in followers}
            probs.update({(*ctx, w): p for w, p in seen.items()})
            left = 1 - sum(seen.values())
            lower_seen = sum(lower(ctx[1:], w) for w in seen)
            backoff[ctx] = left / max(1e-9, 1 - lower_seen)
        return probs, backoff

    def p_uni(_ctx: tuple, w: str) -> float:
        return p1.get(w, 0.0)

    p2, bo1 = higher(bi, p_uni)

    def p_bi(ctx: tuple, w: str) -> float:
        return p2.get((*ctx, w)) or bo1.get(ctx, 1.0) * p1.get(w, 0.0)

    p3, bo2 = higher(tri, p_bi)
    lines = ["\\data\\", f"ngram 1={len(vocab)}", f"ngram 2={len(p2)}", f"ngram 3={len(p3)}", "", "\\1-grams:"]
    for w in vocab:
        prob = -99.0 if w == "<s>" else math.log10(p1[w])
        lines.append(f"{prob:.4f} {w} {math.log10(bo1.get((w,), 1.0)):.4f}")
    lines += ["", "\\2-grams:"]
    for gram, p in sorted(p2.items()):
        lines.append(f"{math.log10(p):.4f} {' '.join(gram)} {math.log10(bo2.get(gram, 1.0)):.4f}")
    lines += ["", "\\3-grams:"]
    lines += [f"{math.log10(p):.4f} {' '.join(gram)}" for gram, p in sorted(p3.items())]
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def build_adaptation(texts: list[str], headings: list[str], stock_dictionary: Path, out_dir: Path) -> dict:
    """Write kb.lm, kb.dict, kb.words.json and kb.vocab.json into ``out_dir``; returns a summary for the log."""
    corpus = sentences_for_lm(texts) + question_sentences(headings)
    stock = read_dictionary(stock_dictionary)
    vocab = sorted({w for s in corpus for w in s})
    missing = [w for w in vocab if w not in stock]
    guessed = espeak_pronunciations(missing)
    known = set(stock) | set(guessed)
    corpus = [[w for w in s if w in known] for s in corpus]  # a word with no pronunciation cannot be heard
    corpus = [s for s in corpus if s]
    out_dir.mkdir(parents=True, exist_ok=True)
    adaptation = Adaptation(out_dir)
    adaptation.lm.write_text(arpa_trigram(corpus), encoding="utf-8")
    lm_vocab = sorted({w for s in corpus for w in s})
    with open(adaptation.dictionary, "w", encoding="utf-8") as fh:
        for word in lm_vocab:
            fh.write(f"{word} {stock[word] if word in stock else ' '.join(guessed[word])}\n")
            alt = 2
            while f"{word}({alt})" in stock:
                fh.write(f"{word}({alt}) {stock[f'{word}({alt})']}\n")
                alt += 1
    adaptation.words.write_text(json.dumps(lm_vocab), encoding="utf-8")
    from appliance.speech.vocabulary import Vocabulary

    Vocabulary.build(texts + headings, {w.split("(")[0] for w in stock}).save(adaptation.vocabulary)
    return {"words": len(lm_vocab), "sentences": len(corpus), "pronounced_by_espeak": len(guessed),
            "dropped_unpronounceable": len(missing) - len(guessed)}
