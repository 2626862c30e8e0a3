"""The words in the rows' texts, as 01 shows them: counts, n-grams per group, word clouds, NMF topics.

Counted on `measures.analysis_text` without links, emails, @handles and entities, stop words removed
(`textrules.stop_words`, negations kept), so the words are the data's, not its noise.
"""
from __future__ import annotations

import html
import math
from collections import Counter

import numpy as np
import pandas as pd

from . import measures, textrules
from .schema import group_key

# Fragments of contractions ("don't" -> "don") and leftovers that say nothing about the data.
FILLER_WORDS = {"don", "doesn", "didn", "isn", "wasn", "aren", "won", "ll", "ve", "re", "im", "amp", "http", "https"}
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"  # words of two or more letters: numbers are not topics


def words_text(row: dict) -> str:
    """The text whose words are counted: no links, emails, @handles or entities (the noise table counts those)."""
    text = measures.analysis_text(row)
    for rx in (textrules.URL_RE, textrules.EMAIL_RE, textrules.USER_RE):
        text = rx.sub(" ", text)
    return html.unescape(text)


def count_words(texts: list[str], n: int = 1):
    """A fitted CountVectorizer and the document-term matrix of n-grams, stop words removed."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(ngram_range=(n, n), token_pattern=TOKEN_PATTERN,
                          stop_words=sorted(textrules.stop_words() | FILLER_WORDS))
    return vec, vec.fit_transform(texts)


def top_ngrams(texts: list[str], n: int, top: int) -> pd.DataFrame:
    """The most frequent n-grams (stop words removed) with their counts."""
    try:
        vec, matrix = count_words(texts, n)
    except ValueError:  # every word was a stop word, or no text
        return pd.DataFrame(columns=["ngram", "count"])
    counts = np.asarray(matrix.sum(axis=0)).ravel()
    names = vec.get_feature_names_out()
    order = np.lexsort((names, -counts))[:top]  # most frequent first, ties alphabetical: stable output
    return pd.DataFrame({"ngram": names[order], "count": counts[order]})


def ngrams_by_group(rows: list[dict], groups: list[str], n: int, top: int) -> pd.DataFrame:
    """Top n-grams of each group side by side (one column per label or topic)."""
    key = group_key(rows)
    cols = {}
    for g in groups:
        df = top_ngrams([words_text(r) for r in rows if r.get(key) == g], n, top)
        cols[g] = [f"{w} ({c})" for w, c in zip(df["ngram"], df["count"])] + [""] * (top - len(df))
    return pd.DataFrame(cols)


def word_frequencies(texts: list[str]) -> dict[str, int]:
    """Word counts with stop words removed (what a word cloud draws)."""
    df = top_ngrams(texts, 1, 10**6)
    return dict(zip(df["ngram"], df["count"].astype(int)))


def frequencies_by_group(rows: list[dict], groups: list[str]) -> dict[str, dict[str, int]]:
    """Word frequencies of all rows, then of each given label or topic (what the clouds draw)."""
    key = group_key(rows)
    out = {"all rows": word_frequencies([words_text(r) for r in rows])}
    for g in groups:
        out[f"{key}: {g}"] = word_frequencies([words_text(r) for r in rows if r.get(key) == g])
    return out


def wordcloud_figure(freqs: dict[str, dict[str, int]], max_words: int, seed: int):
    """Word clouds side by side, one per title -> word frequencies."""
    import matplotlib.pyplot as plt
    from wordcloud import WordCloud

    freqs = {t: f for t, f in freqs.items() if f}
    cols = 1 if len(freqs) == 1 else 2
    rows_n = math.ceil(len(freqs) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(7.5, 2.2 * rows_n * (2 if cols == 1 else 1) + 0.3), squeeze=False)
    for ax, (title, f) in zip(axes.ravel(), freqs.items()):
        cloud = WordCloud(width=800, height=400, background_color="white", max_words=max_words,
                          random_state=seed).generate_from_frequencies(f)
        ax.imshow(cloud, interpolation="bilinear")
        ax.set_title(title)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


def topics(texts: list[str], k: int, words: int, seed: int) -> tuple[pd.DataFrame, list[int]]:
    """NMF topics on TF-IDF: top words and size per topic, and each text's topic (-1: none)."""
    from sklearn.decomposition import NMF
    from sklearn.feature_extraction.text import TfidfVectorizer

    # min_df=2: a word in one text cannot tie texts together; max_df=0.5: a word in most texts
    # (a greeting, the product name) would be in every topic.
    vec = TfidfVectorizer(token_pattern=TOKEN_PATTERN, stop_words=sorted(textrules.stop_words() | FILLER_WORDS),
                          min_df=2, max_df=0.5, max_features=5000)
    try:
        tfidf = vec.fit_transform(texts)
    except ValueError:  # too few texts or words
        return pd.DataFrame(columns=["topic", "rows", "share", "top_words"]), [-1] * len(texts)
    k = min(k, tfidf.shape[0], tfidf.shape[1])
    if k < 1:
        return pd.DataFrame(columns=["topic", "rows", "share", "top_words"]), [-1] * len(texts)
    nmf = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=400)
    weights = nmf.fit_transform(tfidf)  # (texts, k)
    assigned = [int(w.argmax()) if w.max() > 0 else -1 for w in weights]
    vocab = vec.get_feature_names_out()
    sizes = Counter(assigned)
    lines = [{"topic": t, "rows": sizes.get(t, 0), "share": round(sizes.get(t, 0) / len(texts), 3),
              "top_words": ", ".join(vocab[i] for i in comp.argsort()[::-1][:words])}
             for t, comp in enumerate(nmf.components_)]
    if sizes.get(-1):  # rows whose every word was a stop word, or too rare or too common to count
        lines.append({"topic": -1, "rows": sizes[-1], "share": round(sizes[-1] / len(texts), 3),
                      "top_words": "(none: no word left after stop, rare and common words are removed)"})
    return pd.DataFrame(lines), assigned


def topic_metrics(table: pd.DataFrame) -> dict:
    """Rows per NMF topic, keyed by its top words, for metrics["explore"]."""
    return {"nmf_topics": {w: int(n) for w, n in zip(table["top_words"], table["rows"])}}
