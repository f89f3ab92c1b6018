"""The bilingual glossary (chapters/GLOSSARY.md) covers the course, and every notebook closes with a 小结.

The rule, stated once:

- A glossary *term* is a row's English name, each part of it split on " / ", with any bracketed
  part also counted on its own ("multilayer perceptron (MLP)" gives "multilayer perceptron" and
  "MLP"), plus the row's *Also matches* column.
- Text and terms are compared after :func:`normalize` (lower case, accents dropped, hyphens and
  underscores read as spaces), as whole words, with an optional plural "s"/"es".
- Every Markdown heading of every notebook (a line starting with ``#`` outside fenced code) contains
  a term, unless it is one of the :data:`GENERIC_HEADINGS`.
- Every exercise (a ``grade_id`` such as ``ch02_batchnorm_forward``: chapter prefix and ``_solution``
  dropped, the rest read as words, "batchnorm forward") contains a term.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from autograder.lab import GLOSSARY

from .conftest import CHAPTERS_DIR, NOTEBOOKS, nbgrader_meta

GLOSSARY_PATH = CHAPTERS_DIR / GLOSSARY
HEADER = "| English | 中文 | Ch. | Also matches |"
# Headings that name a part of every notebook, not a subject.
GENERIC_HEADINGS = {"summary", "小结", "setup", "further exercises"}
CJK = re.compile(r"[\u4e00-\u9fff]")
# Terms the issue fixed, as Chinese deep-learning textbooks (《动手学深度学习》) write them.
STANDARD = {
    "backpropagation": "反向传播", "gradient descent": "梯度下降", "stochastic gradient descent": "随机梯度下降",
    "momentum": "动量", "learning rate": "学习率", "overfitting": "过拟合", "regularization": "正则化",
    "dropout": "丢弃法", "batch normalization": "批归一化", "convolution": "卷积", "pooling": "池化",
    "padding": "填充", "stride": "步幅", "residual network": "残差网络", "residual connection": "残差连接",
    "recurrent neural network": "循环神经网络", "long short-term memory": "长短期记忆网络",
    "gated recurrent unit": "门控循环单元", "attention": "注意力机制", "self-attention": "自注意力",
    "multi-head attention": "多头注意力", "positional encoding": "位置编码", "layer normalization": "层归一化",
    "decoder block": "解码器块", "causal mask": "因果掩码", "gradient norm": "梯度范数",
    "autoencoder": "自编码器", "variational autoencoder": "变分自编码器",
    "generative adversarial network": "生成对抗网络", "reinforcement learning": "强化学习",
    "markov decision process": "马尔可夫决策过程", "bellman equation": "贝尔曼方程",
    "policy gradient": "策略梯度", "knowledge distillation": "知识蒸馏", "pruning": "剪枝",
    "quantization": "量化", "data parallelism": "数据并行", "mixed precision": "混合精度",
}


@dataclass(frozen=True)
class Entry:
    english: str
    chinese: str
    chapter: int
    terms: tuple[str, ...]  # normalised


def normalize(text: str) -> str:
    """Return ``text`` lower-cased, without accents or backticks, hyphens/underscores as spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().replace("`", "")
    return " ".join(re.sub(r"[-_–—]", " ", text).split())


def _terms(english: str, also: str) -> tuple[str, ...]:
    found = []
    for part in english.split(" / "):
        found += [a for a in re.findall(r"\(([^)]*)\)", part) for a in a.split(",")]
        found.append(re.sub(r"\([^)]*\)", "", part))
    found += also.split(",")
    return tuple(dict.fromkeys(t for t in (normalize(f) for f in found) if t))


def parse_glossary(text: str) -> list[Entry]:
    """Return the rows of the glossary's table (``HEADER``, a separator, then one row per term)."""
    lines = text.splitlines()
    assert HEADER in lines, f"expected the table header {HEADER!r} in {GLOSSARY_PATH}"
    entries = []
    for line in lines[lines.index(HEADER) + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"expected 4 cells (English | 中文 | Ch. | Also matches), got {line!r}"
        english, chinese, chapter, also = cells
        assert chapter.isdigit(), f"{english}: chapter {chapter!r} is not a number"
        entries.append(Entry(english, chinese, int(chapter), _terms(english, also)))
    return entries


@functools.cache
def _pattern(terms: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(t) for t in terms)
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?:s|es)?(?![a-z0-9])")


def covered_by(text: str, entries: list[Entry]) -> list[str]:
    """Return the English names of the entries one of whose terms occurs in ``text`` as whole words."""
    text = normalize(text)
    return [e.english for e in entries if _pattern(e.terms).search(text)]


def headings(nb: nbformat.NotebookNode) -> list[str]:
    """Return the Markdown headings of ``nb`` (without the #s), skipping fenced code blocks."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        fenced = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and re.match(r"#{1,6} ", line):
                found.append(line.lstrip("#").strip())
    return found


def exercise_words(grade_id: str) -> str:
    """``ch02_batchnorm_forward_solution`` -> ``batchnorm forward``."""
    return re.sub(r"^ch\d\d_|_solution$", "", grade_id).replace("_", " ")


@pytest.fixture(scope="module")
def entries() -> list[Entry]:
    return parse_glossary(GLOSSARY_PATH.read_text(encoding="utf-8"))


def test_glossary_rows_are_well_formed(entries) -> None:
    assert len(entries) >= 100, f"only {len(entries)} rows in {GLOSSARY_PATH}"
    chapters = {int(p.name[:2]) for p in CHAPTERS_DIR.iterdir() if re.match(r"\d\d_", p.name)}
    for e in entries:
        assert CJK.search(e.chinese), f"{e.english}: the 中文 column {e.chinese!r} holds no Chinese"
        assert e.chapter in chapters, f"{e.english}: chapter {e.chapter} is not one of {sorted(chapters)}"
    names = [e.english.lower() for e in entries]
    assert names == sorted(names), "keep the table sorted alphabetically (case-insensitive) by its English column"
    owners: dict[str, str] = {}
    for e in entries:
        for t in e.terms:
            owner = owners.setdefault(t, e.english)
            assert owner == e.english, f"{t!r} is listed by both {owner!r} and {e.english!r}"


def test_standard_chinese_terms(entries) -> None:
    by_term = {t: e for e in entries for t in e.terms}
    for english, chinese in STANDARD.items():
        entry = by_term.get(normalize(english))
        assert entry, f"the glossary has no row for {english!r}"
        assert chinese in entry.chinese, f"{english}: expected {chinese} in the 中文 column, got {entry.chinese!r}"


def test_matching_rule(entries) -> None:
    assert "batch normalization" in covered_by(exercise_words("ch02_batchnorm_forward"), entries)
    assert "gradient clipping" in covered_by("Gradient-norm clipping", entries)
    assert "Fréchet distance" in covered_by(exercise_words("ch05_frechet_distance_solution"), entries)
    assert "recurrent neural network (RNN)" in covered_by("RNNs", entries)
    assert not covered_by("Summary", entries) and not covered_by("hyperparameterless", entries)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_heading_and_exercise_has_a_glossary_term(path: Path, entries) -> None:
    nb = nbformat.read(path, as_version=4)
    missing = [f"heading {h!r}" for h in headings(nb)
               if normalize(re.sub(r"^\d+\.\s*", "", h)) not in GENERIC_HEADINGS and not covered_by(h, entries)]
    grade_ids = sorted({nbgrader_meta(c)["grade_id"] for c in nb.cells if nbgrader_meta(c).get("grade_id")})
    missing += [f"exercise {g} ({exercise_words(g)!r})" for g in grade_ids
                if not covered_by(exercise_words(g), entries)]
    assert not missing, (f"{path.parent.name}/{path.name}: no term of {GLOSSARY_PATH.name} in " + "; ".join(missing)
                         + ". Add the term (English | 中文 | chapter) or a spelling to its 'Also matches' column.")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_closes_with_a_chinese_summary_that_links_the_glossary(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    summary = [m.end() for m in re.finditer(r"^#+ (?:\d+\. )?Summary\s*$", text, re.M)]
    assert summary, f"{path.name}: expected a closing '## Summary' heading"
    zh = re.search(r"^#+ 小结\s*$", text[summary[-1]:], re.M)
    assert zh, f"{path.name}: expected a '小结' heading (the 中文 summary) after the English summary"
    body = text[summary[-1] + zh.end():]
    chinese = len(CJK.findall(body))
    assert chinese >= 80, f"{path.name}: the 小结 is too short ({chinese} Chinese characters)"
    assert "](../GLOSSARY.md)" in body, f"{path.name}: the 小结 should link the glossary as ](../GLOSSARY.md)"
