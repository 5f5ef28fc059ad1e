"""The classifier judge's features and its pickle-free linear predictor.

Two TF-IDF blocks, each L2-normalised on its own (what scikit-learn's FeatureUnion of two TfidfVectorizers gives):
word 1-2-grams and character 2-5-grams inside word boundaries (`char_wb`). The analyzers below are the ones
scikit-learn is given at training time (as callables), so the saved predictor re-creates exactly the features it
was trained on; only the TF-IDF weighting (sublinear tf, stored idf, L2 norm) is re-implemented here, in a few lines.
Character n-grams carry the transfer: they survive the glued sentences and odd spacing of real model outputs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

_WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern


def word_ngrams(text: str) -> list[str]:
    """Lower-cased word unigrams and bigrams."""
    tokens = _WORD.findall(text.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def char_wb_ngrams(text: str, low: int = 2, high: int = 5) -> list[str]:
    """Lower-cased character n-grams of each space-padded word; a word shorter than n is counted once, whole."""
    grams: list[str] = []
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(low, high + 1):
            if len(padded) <= n:
                grams.append(padded)
                break
            grams.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return grams


ANALYZERS: dict[str, Callable[[str], list[str]]] = {"word": word_ngrams, "char_wb": char_wb_ngrams}
FEATURES = "tfidf word 1-2-grams + char_wb 2-5-grams (sublinear tf, l2 per block) -> logistic regression"


class LinearTfidf:
    """decision(text) = sum over blocks of <l2(tfidf_block(text)), coef_block> + intercept; P(safe) = sigmoid.

    `blocks`: [{"analyzer": name, "vocabulary": [term of column j], "idf": [float], "coef": [float]}], as saved.
    """

    def __init__(self, blocks: list[dict[str, Any]], intercept: float):
        self.blocks = []
        for block in blocks:
            if not len(block["vocabulary"]) == len(block["idf"]) == len(block["coef"]):
                raise ValueError(f"block {block['analyzer']!r}: vocabulary, idf and coef differ in length")
            weights = {term: (idf, coef) for term, idf, coef in zip(block["vocabulary"], block["idf"], block["coef"],
                                                                     strict=True)}
            self.blocks.append((ANALYZERS[block["analyzer"]], weights))
        self.intercept = float(intercept)

    def decision(self, text: str) -> float | None:
        """The logit of `safe`; None when the text has no feature the classifier knows (nothing to judge)."""
        total, known = self.intercept, False
        for analyzer, weights in self.blocks:
            square, dot = 0.0, 0.0
            for term, count in Counter(analyzer(text)).items():
                if term in weights:
                    idf, coef = weights[term]
                    value = (1.0 + math.log(count)) * idf
                    square += value * value
                    dot += value * coef
            if square > 0.0:
                total += dot / math.sqrt(square)
                known = True
        return total if known else None

    def probability(self, text: str) -> float | None:
        logit = self.decision(text)
        if logit is None:
            return None
        return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))


def fit_pipeline(texts: list[str], labels: list[int], c: float):
    """The scikit-learn pipeline (FeatureUnion of the two TF-IDF blocks, LogisticRegression), fitted."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    union = FeatureUnion([(name, TfidfVectorizer(analyzer=analyzer, sublinear_tf=True, min_df=2))
                          for name, analyzer in ANALYZERS.items()])
    return Pipeline([("features", union), ("logreg", LogisticRegression(C=c, max_iter=5000))]).fit(texts, labels)


def export_blocks(pipeline) -> tuple[list[dict[str, Any]], float]:
    """A fitted pipeline's weights as plain lists (blocks, intercept): what LinearTfidf and the JSON file hold."""
    model = pipeline.named_steps["logreg"]
    coef, start, blocks = model.coef_[0], 0, []
    for name, vectorizer in pipeline.named_steps["features"].transformer_list:
        vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)  # column order
        width = len(vocabulary)
        blocks.append({"analyzer": name, "vocabulary": vocabulary, "idf": vectorizer.idf_.tolist(),
                       "coef": coef[start : start + width].tolist()})
        start += width
    return blocks, float(model.intercept_[0])
