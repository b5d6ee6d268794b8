"""Concept depth: at which layer does a concept become linearly readable?

Jin et al. (2024), "Exploring Concept Depth: How Large Language Models Acquire Knowledge at
Different Layers?".

Per block ``l``, the last token's representation of every labelled text (by default the output
of the block's pre-MLP norm, Jin et al.'s post-attention norm output; optionally the block
output) is fed to an L2-regularised logistic-regression probe (features standardised on the
training split, fixed C) trained on a fixed, seeded, stratified split. Reported per layer on
the test split: accuracy, F1 (class 1 positive) and ROC-AUC. The concept depth is the first
layer whose accuracy reaches ``fraction`` (default 0.9) of the best layer's accuracy; normalised
depth is ``(l + 1) / L`` so models of different depth share one axis. Perturbation: ``noise_tokens``
seeded random vocabulary tokens are prepended to every text (after the BOS token where the
tokenizer adds one); comparing the depth with and without them gives the shift.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np

from workbench import concept_datasets, prompts, tracing
from workbench.analyses.base import Analysis
from workbench.axes import LayerSummary
from workbench.errors import BadPrompt, BadRequest

NAME = "concept_depth"
VERSION = 1
SITES = ("mlp_input", "block_output")
MAX_NOISE_TOKENS = 64


@dataclass(frozen=True)
class ConceptDepthRequest:
    task: str  # the dataset's name (a bundled task or the user's CSV name)
    texts: tuple[str, ...]
    labels: tuple[int, ...]  # 0 / 1
    site: str = "mlp_input"
    noise_tokens: int = 0
    fraction: float = 0.9
    test_fraction: float = 0.3
    seed: int = 0
    l2_c: float = 1.0  # inverse L2 strength of the logistic regression

    def __post_init__(self):
        object.__setattr__(self, "texts", tuple(self.texts))  # JSON round trips give lists
        object.__setattr__(self, "labels", tuple(int(y) for y in self.labels))
        if self.site not in SITES:
            raise BadRequest(f"site must be one of {', '.join(SITES)}, not '{self.site}'.")
        if len(self.texts) != len(self.labels):
            raise BadRequest("texts and labels must have the same length.")
        if set(self.labels) != {0, 1}:
            raise BadRequest("labels must hold both classes, 0 and 1 (and nothing else).")
        if min(self.labels.count(0), self.labels.count(1)) < 4:
            raise BadRequest("each class needs at least 4 examples for a train/test split.")
        if not 0 <= self.noise_tokens <= MAX_NOISE_TOKENS:
            raise BadRequest(f"noise_tokens must be between 0 and {MAX_NOISE_TOKENS}.")
        if not 0 < self.fraction <= 1:
            raise BadRequest("fraction must be in (0, 1].")
        if not 0.1 <= self.test_fraction <= 0.5:
            raise BadRequest("test_fraction must be between 0.1 and 0.5.")
        if not self.l2_c > 0:
            raise BadRequest("l2_c must be positive.")


@dataclass(frozen=True, eq=False)
class ConceptDepthResult:
    model_name: str
    task: str
    site: str
    accuracy: np.ndarray  # (block,) test accuracy per block
    f1: np.ndarray  # (block,)
    roc_auc: np.ndarray  # (block,)
    depth_layer: int  # first block reaching fraction * max accuracy
    fraction: float
    noise_tokens: int
    n_train: int
    n_test: int
    chance: float  # accuracy of always answering the test split's majority class

    def __post_init__(self):
        n = len(self.accuracy)
        for name in ("f1", "roc_auc"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"ConceptDepthResult.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if not 0 <= self.depth_layer < n:
            raise ValueError("depth_layer out of range")

    @property
    def n_layers(self) -> int:
        return len(self.accuracy)

    @property
    def normalised_depth(self) -> np.ndarray:
        """(block,) ``(l + 1) / L``: the share of the model's blocks run at block ``l``."""
        return normalised_depth(self.n_layers)

    @property
    def depth(self) -> float:
        return float(self.normalised_depth[self.depth_layer])

    @property
    def best_layer(self) -> int:
        return int(np.argmax(self.accuracy))



def normalised_depth(n_layers: int) -> np.ndarray:
    return (np.arange(n_layers) + 1) / n_layers


def split_indices(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified, seeded (train, test) split of example indices; the same inputs give the same split."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed,
                                   stratify=labels)
    return np.sort(train), np.sort(test)


def probe_layer(x_train, y_train, x_test, y_test, l2_c: float, seed: int) -> tuple[float, float, float]:
    """(accuracy, F1, ROC-AUC) on the test split of a standardised L2 logistic-regression probe."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(C=l2_c, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(scaler.transform(x_train), y_train)
    x_test = scaler.transform(x_test)
    predicted = probe.predict(x_test)
    score = probe.predict_proba(x_test)[:, 1]
    return (float(accuracy_score(y_test, predicted)), float(f1_score(y_test, predicted, zero_division=0.0)),
            float(roc_auc_score(y_test, score)))


def concept_depth_layer(accuracy: np.ndarray, fraction: float) -> int:
    """The first layer whose accuracy reaches ``fraction`` of the maximum."""
    accuracy = np.asarray(accuracy, dtype=float)
    return int(np.argmax(accuracy >= fraction * accuracy.max() - 1e-12))


def compute(
    model_name: str, features: np.ndarray, request: ConceptDepthRequest, progress=lambda f, m: None
) -> ConceptDepthResult:
    """``features`` (block, example, d_model): the last-token states of ``request.texts``."""
    labels = np.asarray(request.labels)
    if features.ndim != 3 or features.shape[1] != len(labels):
        raise ValueError(f"features must be (block, {len(labels)}, d_model), got {features.shape}")
    train, test = split_indices(labels, request.test_fraction, request.seed)
    metrics = []
    for layer in range(features.shape[0]):
        progress(layer / features.shape[0], f"Probing block {layer + 1} of {features.shape[0]}")
        x = features[layer].astype(np.float64)
        metrics.append(probe_layer(x[train], labels[train], x[test], labels[test], request.l2_c, request.seed))
    accuracy, f1, auc = (np.array(column, dtype=np.float32) for column in zip(*metrics, strict=True))
    majority = max(np.mean(labels[test]), 1 - np.mean(labels[test]))
    return ConceptDepthResult(
        model_name=model_name, task=request.task, site=request.site, accuracy=accuracy, f1=f1, roc_auc=auc,
        depth_layer=concept_depth_layer(accuracy, request.fraction), fraction=request.fraction,
        noise_tokens=request.noise_tokens, n_train=len(train), n_test=len(test), chance=float(majority),
    )


def add_noise(sequences: list[list[int]], n_tokens: int, vocab: list[int], keep_prefix: int, seed: int):
    """Each sequence with ``n_tokens`` seeded random tokens from ``vocab`` inserted after its first
    ``keep_prefix`` tokens (the BOS token where the tokenizer adds one). Deterministic in ``seed``."""
    if n_tokens == 0:
        return [list(s) for s in sequences]
    rng = random.Random(seed)
    noisy = []
    for seq in sequences:
        noise = [vocab[rng.randrange(len(vocab))] for _ in range(n_tokens)]
        noisy.append(list(seq[:keep_prefix]) + noise + list(seq[keep_prefix:]))
    return noisy


def depth_shift(clean: ConceptDepthResult, perturbed: ConceptDepthResult) -> tuple[int, float]:
    """How much deeper (in blocks and in normalised depth) the perturbed run reaches its depth."""
    return perturbed.depth_layer - clean.depth_layer, perturbed.depth - clean.depth


BATCH_SIZE = 16  # texts per extraction batch (length-sorted, right-padded; equal to unbatched runs)


def features(model, request: ConceptDepthRequest, settings, activations, progress=lambda f, m: None,
             batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(block, example, d_model) last-token states of the request's texts (with its noise tokens),
    extracted in length-sorted batches; ``activations(site, digest, compute)`` is the store's
    activation-set cache, so a new probe option on the same texts needs no model run."""
    sequences = add_noise(
        _sequences(model, request.texts, settings), request.noise_tokens, _noise_vocabulary(model),
        keep_prefix=len(model.tokenizer("").input_ids), seed=request.seed,
    )

    def extract() -> np.ndarray:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # little padding per batch
        values = np.zeros((model.info.n_layers, len(sequences), model.info.d_model), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            progress(start / len(order), f"Extracting representations ({request.task}): {start} of {len(order)} texts")
            values[:, rows] = tracing.last_token_states(model, [sequences[i] for i in rows], request.site).numpy()
        return values

    digest = hashlib.sha256(json.dumps(sequences).encode()).hexdigest()
    values = activations(f"concept_{request.site}", digest, extract)
    progress(None, f"Training the probes ({request.task})")
    return values


def _sequences(model, texts: tuple[str, ...], settings) -> list[list[int]]:
    limit = min(settings.max_prompt_tokens, model.info.max_positions or settings.max_prompt_tokens)
    sequences = [list(model.tokenizer(text).input_ids) for text in texts]
    for index, seq in enumerate(sequences):
        if len(seq) + MAX_NOISE_TOKENS > limit:
            raise BadPrompt(f"Text {index + 1} is {len(seq)} tokens long; with room for noise tokens the "
                            f"limit is {limit - MAX_NOISE_TOKENS} tokens. Shorten it.")
    return sequences


def _noise_vocabulary(model) -> list[int]:
    """Token ids that noise may use: the model's vocabulary without the tokenizer's special tokens."""
    special = set(model.tokenizer.all_special_ids)
    size = min(model.info.vocab_size, len(model.tokenizer))
    return [i for i in range(size) if i not in special]


def check(request: ConceptDepthRequest, settings) -> None:
    prompts.check_texts(request.texts, "Text", settings)


def run(ctx, request: ConceptDepthRequest, progress, batch_size: int = BATCH_SIZE) -> ConceptDepthResult:
    """Block-wise linear probes of one labelled dataset (Jin et al.); representations are cached."""
    values = features(ctx.model, request, ctx.settings, ctx.activations, progress, batch_size)
    return compute(ctx.name, values, request, progress)


def with_batch_size(batch_size: int) -> Analysis:
    """The analysis extracting ``batch_size`` texts per batch (same results, same cache key)."""
    return dataclasses.replace(ANALYSIS, run=partial(run, batch_size=batch_size))


def summary(result: ConceptDepthResult) -> list[LayerSummary]:
    """Probe test accuracy per block."""
    return [LayerSummary.per_block(result.model_name, NAME, f"probe accuracy: {result.task}", result.accuracy)]


def bundled_task_fields(data: dict) -> dict:
    """{"task": "factual", "limit": 200, ...} -> the request fields with the bundled texts."""
    if "texts" in data:
        return data
    data = dict(data)
    task = data.get("task")
    if task not in concept_datasets.TASKS:
        raise BadRequest(f"Name a bundled concept task ({', '.join(concept_datasets.TASKS)}) or give texts and labels.")
    dataset = concept_datasets.builtin(task).subset(data.pop("limit", None))
    return {**data, "texts": list(dataset.texts), "labels": list(dataset.labels)}


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Concept depth", Request=ConceptDepthRequest, Result=ConceptDepthResult,
    run=run, check=check, summary=summary, expand_fields=bundled_task_fields,
    compare_request=lambda inputs: ANALYSIS.request({"task": inputs.task, "limit": inputs.limit}),
    compare_figure="curves", compare_note="probes: slow on CPU",
)
