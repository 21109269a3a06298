"""English tokens for the text metrics: the WMT convention (mteval-v13a), lower-cased.

English reports (the release's reports_en, `data.report_language = "en"`) are scored with the tokenisation every
English MT/captioning BLEU uses, so numbers compare with sacrebleu's default: punctuation split off; a period or
comma stays inside a number ("5.5", "1,000"); a dash after a digit is split ("T5-T6" -> "t5 - t6"). Checked against
sacrebleu's 13a tokenizer in the tests.
"""
from __future__ import annotations

import re

# mteval-v13a's rules, in order: the punctuation and symbol ranges { | } ~ [ \\ ] ^ _ ` space ! " # $ % & ( ) * +
# : ; < = > ? @ /; then periods and commas not between digits; then a dash after a digit.
_RULES = (
    (re.compile(r"([{-~\[-` -&(-+:-@/])"), r" \1 "),
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


def tokenize_13a(text: str, lowercase: bool = True) -> list[str]:
    line = (text or "").replace("-\n", "").replace("\n", " ")
    for entity, char in _ENTITIES:
        line = line.replace(entity, char)
    line = f" {line} "
    for pattern, repl in _RULES:
        line = pattern.sub(repl, line)
    return (line.lower() if lowercase else line).split()
