#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Suggest allow-list phrases for a sensitive-word library.

Finds the short words (2-3 characters by default) of one or more word lists
that occur most often in a benign corpus, and for each prints the contexts it
occurs in: the word with one neighbouring character on the left, on the right
and on both sides, most frequent first. A person then picks the contexts that
make the hit an ordinary word (路口交通 for 口交) and writes them to allow.txt.

Nothing here embeds word-list or corpus text: both are read from the paths
given on the command line.

    python3 allow_candidates.py --lexicon L1.txt L2.txt --corpus C1.txt C2.txt \
        [--min-len 2] [--max-len 3] [--top 60] [--contexts 8] [--skip words.txt] \
        [--tsv out.tsv]

Text is compared after NFKC + lowercase, the same first steps qunfa's
normaliser takes; the corpus is expected to be simplified Chinese already.
"""
import argparse
import collections
import sys
import unicodedata


def norm(s):
    return unicodedata.normalize("NFKC", s).lower()


def is_cjk(ch):
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FFFF


def read_words(paths, min_len, max_len):
    words = set()
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                w = norm(line.strip())
                if not w or w.startswith("#"):
                    continue
                # only all-CJK words: Latin entries are whole-word matched and
                # do not produce substring false positives of this kind
                if min_len <= len(w) <= max_len and all(is_cjk(c) for c in w):
                    words.add(w)
    return words


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lexicon", nargs="+", required=True)
    ap.add_argument("--corpus", nargs="+", required=True)
    ap.add_argument("--min-len", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=3)
    ap.add_argument("--top", type=int, default=60, help="words to report")
    ap.add_argument("--contexts", type=int, default=8, help="contexts per side")
    ap.add_argument("--skip", help="file of words to leave out (one a line)")
    ap.add_argument("--tsv", help="also write word, hits, side, context, count")
    a = ap.parse_args()

    words = read_words(a.lexicon, a.min_len, a.max_len)
    if a.skip:
        words -= read_words([a.skip], 1, 100)
    by_len = collections.defaultdict(set)
    for w in words:
        by_len[len(w)].add(w)

    hits = collections.Counter()
    lines_hit = collections.Counter()
    left = collections.defaultdict(collections.Counter)
    right = collections.defaultdict(collections.Counter)
    both = collections.defaultdict(collections.Counter)
    total = 0
    for p in a.corpus:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                t = norm(line.rstrip("\n"))
                total += 1
                seen = set()
                for n, ws in by_len.items():
                    for i in range(len(t) - n + 1):
                        w = t[i:i + n]
                        if w not in ws:
                            continue
                        hits[w] += 1
                        seen.add(w)
                        l = t[i - 1] if i > 0 else ""
                        r = t[i + n] if i + n < len(t) else ""
                        if l and is_cjk(l):
                            left[w][l + w] += 1
                        if r and is_cjk(r):
                            right[w][w + r] += 1
                        if l and r and is_cjk(l) and is_cjk(r):
                            both[w][l + w + r] += 1
                for w in seen:
                    lines_hit[w] += 1

    out = open(a.tsv, "w", encoding="utf-8") if a.tsv else None
    print(f"# {len(words)} words, {total} corpus lines")
    for w, c in hits.most_common(a.top):
        print(f"\n{w}\thits={c}\tlines={lines_hit[w]}")
        for side, cnt in (("L", left[w]), ("R", right[w]), ("LR", both[w])):
            ctx = cnt.most_common(a.contexts)
            print(f"  {side:2} " + "  ".join(f"{k}:{v}" for k, v in ctx))
            if out:
                for k, v in ctx:
                    out.write(f"{w}\t{c}\t{side}\t{k}\t{v}\n")
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
