#!/usr/bin/env python3
"""Regenerates data/t2s.txt from OpenCC's TSCharacters.txt (Apache-2.0).

    pip download --no-deps opencc-python-reimplemented && unzip the wheel
    python3 data/tools/t2s.py opencc/dictionary/TSCharacters.txt > data/t2s.txt
"""
import sys

print("# Traditional → simplified Chinese, one character pair per line (traditional first).")
print("# Derived from OpenCC's dictionary/TSCharacters.txt (first candidate of each entry),")
print("# Copyright (c) BYVoid and the OpenCC contributors, Apache License 2.0,")
print("# https://github.com/BYVoid/OpenCC. Regenerate with data/tools/t2s.py.")
for line in open(sys.argv[1], encoding="utf-8"):
    trad, simp = line.rstrip("\n").split("\t")
    simp = simp.split(" ")[0]
    if len(trad) == 1 and len(simp) == 1 and trad != simp:
        print(trad + simp)
