"""Concept depth: probes find a planted signal at its layer only, splits are deterministic,
batched extraction equals unbatched, datasets are sound and user CSVs fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import concept_datasets, tracing
from workbench.analyses import concept_depth
from workbench.analyses.concept_depth import ConceptDepthRequest
from workbench.errors import BadPrompt, BadRequest

# ---------------------------------------------------------------------- probes on planted signals


def _planted(n_layers=6, n=400, d=16, layer=3, seed=0):
    """Gaussian noise features; only ``layer`` carries the label along one direction (margin 3 sigma)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    features = rng.standard_normal((n_layers, n, d)).astype(np.float32)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    features[layer] += np.outer(np.where(labels == 1, 3.0, -3.0), direction).astype(np.float32)
    return features, labels


def _request(labels, **options):
    return ConceptDepthRequest("planted", tuple(f"text {i}" for i in range(len(labels))), tuple(labels), **options)


def test_probe_reads_planted_signal_at_its_layer_and_chance_elsewhere():
    features, labels = _planted(layer=3)
    result = concept_depth.compute("synthetic", features, _request(labels))
    assert result.accuracy[3] >= 0.97 and result.roc_auc[3] >= 0.99 and result.f1[3] >= 0.97
    others = np.delete(np.arange(6), 3)
    assert np.all(np.abs(result.accuracy[others] - 0.5) < 0.12)  # chance: 120 test examples, std ~0.046
    assert np.all(np.abs(result.roc_auc[others] - 0.5) < 0.2)  # AUC std ~0.053 here
    assert result.depth_layer == 3 and result.best_layer == 3
    assert result.depth == pytest.approx(4 / 6)
    assert result.chance == pytest.approx(0.5) and result.n_test == 120 and result.n_train == 280


def test_concept_depth_is_first_layer_reaching_the_fraction():
    accuracy = np.array([0.5, 0.6, 0.85, 0.95, 1.0, 0.9])
    assert concept_depth.concept_depth_layer(accuracy, 0.9) == 3
    assert concept_depth.concept_depth_layer(accuracy, 0.85) == 2
    assert concept_depth.concept_depth_layer(accuracy, 1.0) == 4
    assert concept_depth.concept_depth_layer(accuracy, 0.5) == 0


def test_signal_from_a_layer_on_gives_that_depth():
    features, labels = _planted(layer=2)
    features[3:] = features[2]  # the signal persists after it appears
    result = concept_depth.compute("synthetic", features, _request(labels))
    assert result.depth_layer == 2 and (result.accuracy[2:] > 0.95).all()


def test_splits_are_deterministic_stratified_and_seeded():
    labels = np.array([0] * 60 + [1] * 40)
    train, test = concept_depth.split_indices(labels, 0.3, seed=0)
    again_train, again_test = concept_depth.split_indices(labels, 0.3, seed=0)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(test, again_test)
    assert len(test) == 30 and labels[test].sum() == 12  # stratified: 40 % positives in the test split
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == 100
    other_train, _ = concept_depth.split_indices(labels, 0.3, seed=1)
    assert not np.array_equal(train, other_train)


def test_same_request_gives_identical_numbers():
    features, labels = _planted(layer=1, seed=4)
    a = concept_depth.compute("synthetic", features, _request(labels))
    b = concept_depth.compute("synthetic", features, _request(labels))
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_array_equal(a.roc_auc, b.roc_auc)


@pytest.mark.parametrize("options, message", [
    ({"site": "nowhere"}, "site"), ({"noise_tokens": 65}, "noise_tokens"), ({"fraction": 0.0}, "fraction"),
    ({"test_fraction": 0.9}, "test_fraction"), ({"l2_c": 0.0}, "l2_c"),
])
def test_request_validation(options, message):
    with pytest.raises(BadRequest, match=message):
        _request([0, 1] * 10, **options)


def test_request_needs_both_classes():
    with pytest.raises(BadRequest, match="both classes"):
        _request([1] * 10)


def test_noise_is_seeded_and_keeps_the_prefix():
    sequences = [[1, 10, 11], [1, 12]]
    noisy = concept_depth.add_noise(sequences, 3, list(range(100, 200)), keep_prefix=1, seed=0)
    assert noisy == concept_depth.add_noise(sequences, 3, list(range(100, 200)), keep_prefix=1, seed=0)
    assert [s[0] for s in noisy] == [1, 1] and noisy[0][-2:] == [10, 11] and noisy[1][-1] == 12
    assert all(len(n) == len(s) + 3 and all(100 <= t < 200 for t in n[1:4])
               for n, s in zip(noisy, sequences, strict=True))
    assert concept_depth.add_noise(sequences, 0, [5], 1, 0) == sequences


# ---------------------------------------------------------------------- extraction on tiny models

TEXTS = ["The capital of France is Paris.", "Mary went", "One two three four five six seven eight",
         "Alice and Bob walked to the park."]


@pytest.mark.parametrize("site", tracing.LAST_TOKEN_SITES)
def test_batched_extraction_equals_unbatched(workbench, tiny_dir, site):
    model = workbench.model(str(tiny_dir))
    sequences = [model.tokenizer(t).input_ids for t in TEXTS]
    batched = tracing.last_token_states(model, sequences, site)
    assert batched.shape == (model.info.n_layers, len(TEXTS), model.info.d_model)
    single = torch.cat([tracing.last_token_states(model, [s], site) for s in sequences], dim=1)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-4)
    assert (batched[:, 0] - batched[:, 1]).abs().max() > 1e-3  # rows are not mixed up


def test_block_output_site_is_the_residual_stream(workbench, tiny_dirs):
    model = workbench.model(str(tiny_dirs["gemma3_text"]))
    sequences = [model.tokenizer(t).input_ids for t in TEXTS]
    batched = tracing.last_token_states(model, sequences, "block_output")
    for row, seq in enumerate(sequences):
        resid = tracing.residual_stream(model, torch.tensor(seq)).resid
        torch.testing.assert_close(batched[:, row], resid[1:, -1], rtol=0, atol=1e-4)


def test_service_caches_representations_and_results(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    data = concept_datasets.builtin("factual").subset(40)
    request = ConceptDepthRequest(data.name, data.texts, data.labels)
    result = workbench.concept_depth(name, request, batch_size=7)
    assert result.n_layers == 3 and result.n_test == 12 and ((result.accuracy >= 0) & (result.accuracy <= 1)).all()
    model = workbench.model(name)
    features = workbench.concept_features(model, request)  # from the store now
    sequences = [model.tokenizer(t).input_ids for t in data.texts[:5]]
    np.testing.assert_allclose(features[:, :5], tracing.last_token_states(model, sequences).numpy(), atol=1e-4)
    tracing_calls = []
    original = tracing.last_token_states
    try:
        tracing.last_token_states = lambda *a, **k: tracing_calls.append(1) or original(*a, **k)
        again = workbench.concept_depth(name, ConceptDepthRequest(data.name, data.texts, data.labels, fraction=0.8))
    finally:
        tracing.last_token_states = original
    assert tracing_calls == []  # another fraction re-probes the cached representations
    np.testing.assert_array_equal(again.accuracy, result.accuracy)


def test_noise_changes_the_representations(workbench, tiny_dirs):
    name = str(tiny_dirs["gpt2"])
    data = concept_datasets.builtin("emotional").subset(24)
    model = workbench.model(name)
    clean = workbench.concept_features(model, ConceptDepthRequest(data.name, data.texts, data.labels))
    noisy = workbench.concept_features(model, ConceptDepthRequest(data.name, data.texts, data.labels,
                                                                   noise_tokens=4))
    assert clean.shape == noisy.shape and np.abs(clean - noisy).max() > 1e-3


def test_binary_text_is_refused(workbench, tiny_dirs):
    with pytest.raises(BadPrompt):
        workbench.concept_depth(str(tiny_dirs["gpt2"]),
                                ConceptDepthRequest("bad", ("ok text",) * 7 + ("bad\x00text",), (0, 1) * 4))


# ---------------------------------------------------------------------- datasets


@pytest.mark.parametrize("task", concept_datasets.TASKS)
def test_bundled_datasets_are_balanced_unique_and_deterministic(task):
    data = concept_datasets.builtin(task)
    assert len(data.texts) >= 300 and sum(data.labels) * 2 == len(data.labels)
    assert len(set(data.texts)) == len(data.texts)
    rebuilt = {"factual": concept_datasets.factual, "emotional": concept_datasets.emotional,
               "inferential": concept_datasets.inferential}[task]()
    assert rebuilt.digest == data.digest
    subset = data.subset(50, seed=3)
    assert len(subset.texts) == 50 and sum(subset.labels) == 25 and subset.digest == data.subset(50, seed=3).digest


def test_factual_labels_are_right():
    data = concept_datasets.factual()
    truth = dict(concept_datasets.CITIES)
    for text, label in zip(data.texts, data.labels, strict=True):
        city = next(c for c in truth if text.startswith(c) or text.startswith(f"The city of {c} "))
        assert (text.rstrip(".").endswith(" " + truth[city])) == bool(label), text


def test_inferential_arithmetic_labels_are_right():
    import re

    data = concept_datasets.inferential()
    checked = 0
    for text, label in zip(data.texts, data.labels, strict=True):
        match = re.match(r"\w+ has (\d+) \w+\. \w+ gets (\d+) more and gives away (\d+)\. Now \w+ has (\d+)", text)
        if match:
            start, gained, lost, answer = map(int, match.groups())
            assert (start + gained - lost == answer) == bool(label), text
            checked += 1
    assert checked >= 150


# ---------------------------------------------------------------------- user CSV


def _csv(rows, header="text,label"):
    return header + "\n" + "\n".join(rows)


def test_csv_is_parsed_with_sorted_classes():
    rows = [f'"good thing {i}",pos' for i in range(10)] + [f"bad thing {i},neg" for i in range(12)]
    data = concept_datasets.parse_csv(_csv(rows).encode(), "mine")
    assert data.class_names == ("neg", "pos") and data.labels.count(1) == 10 and data.texts[0] == "good thing 0"


@pytest.mark.parametrize("content, message", [
    (_csv([f"t{i},a" for i in range(30)], header="sentence,label"), "no 'text' column"),
    (_csv([f"t{i},a" for i in range(30)]), "exactly two classes"),
    (_csv([f"t{i},{'ab'[i % 2]}" for i in range(10)]), "at least 20"),
    (_csv([f"t{i},{'ab'[i % 2]}" for i in range(2001)]), "at most 2000"),
    (_csv([f"t{i},{'ab'[i % 2]}" for i in range(29)] + [",a"]), "Row 31 has an empty text"),
    (_csv([f"t{i},{'ab'[i % 2]}" for i in range(29)] + ["x" * 401 + ",a"]), "401 characters"),
    (_csv([f"t{i},{'a' if i < 25 else 'b'}" for i in range(30)]), "'b' has 5 rows"),
    (_csv([f"t{i},{'abc'[i % 3]}" for i in range(30)]), "holds 3"),
    (b"\xff\xfe\x00bad", "UTF-8"),
])
def test_csv_errors_say_what_to_fix(content, message):
    data = content.encode() if isinstance(content, str) else content
    with pytest.raises(BadRequest, match=message):
        concept_datasets.parse_csv(data)
