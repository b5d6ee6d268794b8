"""The backend entry point the pages (and the CLI, benchmarks, tests) call.

Owns the request flow for every analysis:

    check input -> resolve + materialize model (digest, no weights loaded)
    -> result cache lookup -> load model -> trace (or read cached activations)
    -> analyse -> store result

and the per-process registry of loaded models (one load per model, guarded so
two sessions asking at once load it once). Long steps report through a
``progress(fraction | None, message)`` callback that pages turn into widgets.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable

import numpy as np
import torch

from workbench import corpus, prompt_pairs, prompts, tracing
from workbench.analyses import (
    attention_sinks,
    concept_depth,
    depth_use,
    faithfulness,
    latent_language,
    logit_lens,
    neuron_contexts,
    neuron_effect,
    neuron_vocab,
    neurons,
    patching,
    request_digest,
    request_json,
    sink_levels,
    tuned_lens,
)
from workbench.config import Settings, load_settings
from workbench.errors import BadPrompt, BadRequest
from workbench.lens_training import LensTrainer, TrainingStatus, checkpoint_path, saved_status
from workbench.models import catalog, loader
from workbench.models.catalog import LocalModel
from workbench.models.loader import LoadedModel
from workbench.store import ActivationKey, ResultKey, Store
from workbench.store.duckdb_store import ids_digest

Progress = Callable[[float | None, str], None]
RESID_SITE = "resid"


def _silent(_fraction: float | None, _message: str) -> None:
    return None


class Workbench:
    """One per process: holds the store and the loaded models."""

    def __init__(self, settings: Settings | None = None, store: Store | None = None):
        self.settings = settings or load_settings()
        self.store = store or Store(self.settings.database_path, max_bytes=self.settings.cache_max_bytes)
        self._local: dict[str, LocalModel] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._registry_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._trainers: dict[tuple[str, str], LensTrainer] = {}

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ models

    def local_model(self, name: str, progress: Progress = _silent) -> LocalModel:
        """The model's directory and digest, converting bundled weights on first use.

        Every request passes here first, in the thread that serves it: torch's thread count is an
        OpenMP setting of the calling thread, so ``LAYERLENS_THREADS`` is applied here, not only
        in the thread that happened to load the model."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        entry = catalog.resolve(name)
        with self._lock_for(entry.name):
            if entry.name not in self._local:
                self._local[entry.name] = catalog.materialize(entry, self.settings, progress)
            return self._local[entry.name]

    def model(self, name: str, progress: Progress = _silent) -> LoadedModel:
        local = self.local_model(name, progress)
        with self._lock_for(local.name):
            if local.name not in self._loaded:
                progress(None, f"Loading {local.name}")
                try:
                    self._loaded[local.name] = loader.load(local, self.settings)
                except Exception:
                    with self._registry_lock:  # a fixed directory is re-read (and re-digested) next time
                        self._local.pop(local.name, None)
                    raise
            return self._loaded[local.name]

    def _lock_for(self, name: str) -> threading.Lock:
        """One lock per model name: loading one model never blocks requests for another."""
        with self._registry_lock:
            return self._name_locks.setdefault(name, threading.Lock())

    # ------------------------------------------------------------------ activations

    def residual_stream(self, model: LoadedModel, ids: torch.Tensor, progress: Progress = _silent) -> torch.Tensor:
        """(layer, seq, d_model) residual stream for ``ids``, from the store when it is there."""
        key = ActivationKey(model.digest, ids_digest(ids), RESID_SITE)
        cached = self.store.get_activations(key)
        if cached is not None:
            return torch.from_numpy(cached)
        progress(None, "Running the model")
        resid = tracing.residual_stream(model, ids).resid
        self.store.put_activations(key, resid.numpy())
        return resid

    # ------------------------------------------------------------------ analyses

    def cached(self, analysis, local: LocalModel, request, compute: Callable[[], object]):
        """The stored result of ``analysis`` (a module with NAME, VERSION, a result type) for
        ``request`` on ``local``, or ``compute()`` it and store it. Only complete results are stored."""
        key = ResultKey(analysis.NAME, analysis.VERSION, local.digest, request_digest(request))
        result_type = analysis.RESULT_TYPE
        cached = self.store.get_result(key, result_type)
        if cached is not None:
            return cached
        result = compute()
        self.store.put_result(key, result, model_name=local.name, request_json=request_json(request))
        return result

    def logit_lens(
        self, model_name: str, request: logit_lens.LogitLensRequest, progress: Progress = _silent
    ) -> logit_lens.LogitLensResult:
        prompts.check_text(request.prompt, self.settings)
        local = self.local_model(model_name, progress)

        def compute() -> logit_lens.LogitLensResult:
            model = self.model(model_name, progress)
            encoded = prompts.encode(model, request.prompt, self.settings)
            target_id = prompts.single_token_id(model, request.target) if request.target else None
            progress(None, f"Running the model and decoding its {model.info.n_layers + 1} residual states")
            lens = tracing.lens_statistics(model, encoded.ids, request.top_k, target_id)
            return logit_lens.compute(model, encoded.tokens, lens, request, target_id)

        return self.cached(logit_lens, local, request, compute)

    def depth_use(
        self, model_name: str, request: depth_use.DepthUseRequest, progress: Progress = _silent
    ) -> depth_use.DepthUseResult:
        prompts.check_text(request.prompt, self.settings)
        local = self.local_model(model_name, progress)

        def compute() -> depth_use.DepthUseResult:
            model = self.model(model_name, progress)
            encoded = prompts.encode(model, request.prompt, self.settings)
            progress(0.2, "Recording attention and MLP contributions")
            clean = tracing.sublayer_stream(model, encoded.ids)
            progress(0.5, f"Skipping each of the {model.info.n_layers} blocks (one batched run)")
            resid, logits = tracing.skip_layers(model, encoded.ids, list(range(model.info.n_layers)))
            return depth_use.compute(local.name, encoded.tokens, clean, resid, logits, request)

        return self.cached(depth_use, local, request, compute)

    def attention_sinks(
        self, model_name: str, request: attention_sinks.SinkProbeRequest, progress: Progress = _silent
    ) -> attention_sinks.SinkProbeResult:
        """Attention-sink probe of one prompt: sink scores per head, hidden-state sinks, creating MLPs."""
        prompts.check_text(request.prompt, self.settings)
        local = self.local_model(model_name, progress)

        def compute() -> attention_sinks.SinkProbeResult:
            model = self.model(model_name, progress)
            encoded = prompts.encode(model, request.prompt, self.settings)
            progress(None, "Recording attention, residual stream and MLP writes")
            trace = tracing.attention_and_states(model, encoded.ids)
            bos = attention_sinks.first_is_bos(encoded.ids, model.tokenizer.bos_token_id)
            return attention_sinks.compute(
                local.name, encoded.tokens, bos, trace.attn, trace.resid, trace.mlp_write, request
            )

        return self.cached(attention_sinks, local, request, compute)

    def sink_levels(
        self, model_name: str, request: sink_levels.SinkLevelsRequest, progress: Progress = _silent
    ) -> sink_levels.SinkLevelsResult:
        """The sink probe over a prompt set (each probe cached on its own), secondary sinks collected."""
        _check_texts(request.prompts, "Prompt", self.settings)
        local = self.local_model(model_name, progress)

        def compute() -> sink_levels.SinkLevelsResult:
            _check_texts(request.prompts, "Prompt", self.settings, self.model(model_name, progress))  # all, first
            probes = []
            for index, text in enumerate(request.prompts):
                progress(index / len(request.prompts), f"Probing prompt {index + 1} of {len(request.prompts)}")
                probes.append(self.attention_sinks(model_name, request.probe_request(text)))
            return sink_levels.aggregate(local.name, probes)

        return self.cached(sink_levels, local, request, compute)

    def latent_language(
        self, model_name: str, request: latent_language.LatentLanguageRequest, progress: Progress = _silent
    ) -> latent_language.LatentLanguageResult:
        local = self.local_model(model_name, progress)

        def compute() -> latent_language.LatentLanguageResult:
            model = self.model(model_name, progress)
            return latent_language.compute(
                model,
                request,
                encode=lambda text: prompts.encode(model, text, self.settings).ids,
                last_lens=lambda ids, wanted: tracing.last_position_lens(model, ids, wanted),
                progress=progress,
            )

        return self.cached(latent_language, local, request, compute)

    # ------------------------------------------------------------------ tuned lens

    def tuned_lens_trainer(self, model_name: str, config: tuned_lens.TunedLensConfig,
                           progress: Progress = _silent) -> LensTrainer:
        """The (one per process) trainer of ``config``'s lens for this model, resumed from its checkpoint."""
        model = self.model(model_name, progress)
        key = (model.digest, request_digest(config))
        with self._registry_lock:
            if key not in self._trainers:
                bos = model.tokenizer("").input_ids  # [<bos>] where the tokenizer adds one, else []
                chunks = [bos + c for c in corpus.chunks(model.tokenizer, config.corpus, "train", config.chunk_tokens)]
                self._trainers[key] = LensTrainer(
                    model, config, checkpoint_path(self.settings.cache_dir, model.digest, config), chunks,
                    residuals=lambda ids: tracing.residual_stream(model, ids).resid,
                )
            return self._trainers[key]

    def start_tuned_lens_training(self, model_name: str, config: tuned_lens.TunedLensConfig,
                                  steps: int, progress: Progress = _silent) -> TrainingStatus:
        """Train in the background up to ``steps`` steps in total (resuming where it stopped)."""
        if not 1 <= steps <= 100_000:
            raise BadRequest("steps must be between 1 and 100000.")
        trainer = self.tuned_lens_trainer(model_name, config, progress)
        trainer.start(steps)
        return trainer.status()

    def stop_tuned_lens_training(self, model_name: str, config: tuned_lens.TunedLensConfig) -> TrainingStatus:
        trainer = self.tuned_lens_trainer(model_name, config)
        trainer.stop(wait=True)
        return trainer.status()

    def tuned_lens_status(self, model_name: str, config: tuned_lens.TunedLensConfig) -> TrainingStatus:
        """The running job's status, else what its checkpoint says (no model is loaded for that)."""
        local = self.local_model(model_name)
        with self._registry_lock:
            trainer = self._trainers.get((local.digest, request_digest(config)))
        if trainer is not None:
            return trainer.status()
        return saved_status(checkpoint_path(self.settings.cache_dir, local.digest, config))

    def compare_lenses(
        self, model_name: str, prompt: str, target: str = "", config: tuned_lens.TunedLensConfig | None = None,
        eval_chunks: int = 4, progress: Progress = _silent,
    ) -> tuned_lens.LensComparisonResult:
        """Logit vs tuned lens on held-out text and on ``prompt``, with the lens as trained so far."""
        config = config or tuned_lens.TunedLensConfig()
        prompts.check_text(prompt, self.settings)
        local = self.local_model(model_name, progress)
        model = self.model(model_name, progress)  # prompt length and target checked before the training state
        prompts.encode(model, prompt, self.settings)
        if target:
            prompts.single_token_id(model, target)
        translators, step = self.tuned_lens_trainer(model_name, config, progress).snapshot()
        if step == 0:
            raise BadRequest("This tuned lens has not been trained yet: start training first.")
        request = tuned_lens.LensComparisonRequest(prompt, target, config, step, eval_chunks)

        def compute() -> tuned_lens.LensComparisonResult:
            model = self.model(model_name, progress)
            encoded = prompts.encode(model, prompt, self.settings)
            target_id = prompts.single_token_id(model, target) if target else None
            bos = model.tokenizer("").input_ids
            held_out = [torch.tensor(bos + c) for c in
                        corpus.chunks(model.tokenizer, config.corpus, "heldout", config.chunk_tokens, eval_chunks)]
            return tuned_lens.compare(
                model, translators, request, held_out,
                residuals=lambda ids: tracing.residual_stream(model, ids).resid,
                prompt_ids=encoded.ids, tokens=encoded.tokens, target_id=target_id, progress=progress,
            )

        return self.cached(tuned_lens, local, request, compute)

    def next_token_distribution(self, model_name: str, prompt: str, k: int = 5) -> list[tuple[str, float]]:
        """The model's own top-k next tokens for ``prompt`` (a plain forward pass)."""
        prompts.check_text(prompt, self.settings)
        model = self.model(model_name)
        if not isinstance(k, int) or not 1 <= k <= model.info.vocab_size:
            raise BadRequest(f"k must be a whole number between 1 and {model.info.vocab_size}, got {k!r}.")
        encoded = prompts.encode(model, prompt, self.settings)
        probs = torch.softmax(tracing.forward_logits(model, encoded.ids)[-1].double(), -1)
        top = probs.topk(k)
        tokens = prompts.token_strings(model, top.indices)
        return list(zip(tokens, np.asarray(top.values, dtype=float).tolist(), strict=True))

    # ------------------------------------------------------------------ neurons

    def neuron_classes(
        self, model_name: str, request: neurons.NeuronClassRequest, progress: Progress = _silent
    ) -> neurons.NeuronClassResult:
        """Cosines and classes of every MLP neuron, from the weights (Gerstner & Schuetze)."""
        local = self.local_model(model_name, progress)
        return self.cached(neurons, local, request, lambda: neurons.compute(self.model(model_name, progress),
                                                                           request, progress))

    def neuron_vocab(
        self, model_name: str, request: neuron_vocab.NeuronVocabRequest, progress: Progress = _silent
    ) -> neuron_vocab.NeuronVocabResult:
        """One neuron's cosines, class and the top tokens of W_U . w_out and W_U . w_in."""
        local = self.local_model(model_name, progress)
        return self.cached(neuron_vocab, local, request,
                           lambda: neuron_vocab.compute(self.model(model_name, progress), request))

    def neuron_search_token(
        self, model_name: str, token: str, fold_norm: bool = False, limit: int = 20
    ) -> list[tuple[int, int, float]]:
        """(layer, neuron, cosine) of the neurons whose w_out best matches ``token``'s unembedding."""
        model = self.model(model_name)
        token_id = prompts.single_token_id(model, token)
        return neuron_vocab.search_by_token(model, token_id, fold_norm, limit)

    def neuron_contexts(
        self, model_name: str, request: neuron_contexts.NeuronContextsRequest | None = None,
        progress: Progress = _silent,
    ) -> neuron_contexts.NeuronContextsResult:
        """Top-activating corpus contexts of every neuron (the bundled corpus unless told otherwise)."""
        text = neuron_contexts.corpus_text()
        request = request or neuron_contexts.NeuronContextsRequest(neuron_contexts.corpus_digest(text))
        local = self.local_model(model_name, progress)
        return self.cached(neuron_contexts, local, request,
                           lambda: neuron_contexts.compute(self.model(model_name, progress), request, text, progress))

    def neuron_effect(
        self, model_name: str, request: neuron_effect.NeuronEffectRequest, progress: Progress = _silent
    ) -> neuron_effect.NeuronEffectResult:
        """Next-token change when one neuron's activation is scaled (0 = ablation)."""
        prompts.check_text(request.prompt, self.settings)
        local = self.local_model(model_name, progress)

        def compute() -> neuron_effect.NeuronEffectResult:
            model = self.model(model_name, progress)
            neuron_vocab.check_neuron(model, request.layer, request.neuron)
            encoded = prompts.encode(model, request.prompt, self.settings)
            progress(None, "Running the model with the neuron scaled")
            return neuron_effect.compute(model, encoded.tokens, encoded.ids, request)

        return self.cached(neuron_effect, local, request, compute)

    def neurons_of_class(
        self, model_name: str, request: neurons.NeuronClassRequest, class_name: str,
        layer: int | None = None, limit: int = 50,
    ) -> list[tuple[int, int, float]]:
        """(layer, neuron, cos(in, out)) of the neurons in one class, strongest first."""
        return neurons.neurons_of_class(self.neuron_classes(model_name, request), class_name, layer, limit)

    # ------------------------------------------------------------------ patching

    def patching(
        self, model_name: str, request: patching.PatchingRequest, progress: Progress = _silent
    ) -> patching.PatchingResult:
        """Activation patching, AtP and RelP on one clean/corrupted pair (Jafari et al. 2025)."""
        prompts.check_text(request.clean, self.settings)
        prompts.check_text(request.corrupted, self.settings)
        local = self.local_model(model_name, progress)

        def compute() -> patching.PatchingResult:
            model = self.model(model_name, progress)
            pair = prompt_pairs.PromptPair(request.clean, request.corrupted, request.answer, request.wrong)
            encoded = prompt_pairs.encode_pair(model, pair, self.settings)
            ids = (encoded.clean_ids, encoded.corrupted_ids, encoded.answer_id, encoded.wrong_id)
            activation = self.cached(
                patching.ACTIVATION, local, request.activation_request,
                lambda: patching.compute_activation(model, *ids, request.activation_request, progress),
            )
            return patching.compute(model, *ids, request, activation)

        return self.cached(patching, local, request, compute)

    def ioi_pairs(self, model_name: str, n_pairs: int, seed: int = 0) -> list[prompt_pairs.PromptPair]:
        """IOI clean/corrupted pairs whose names are single tokens for this model."""
        if not isinstance(n_pairs, int) or n_pairs < 1:
            raise BadRequest(f"Ask for at least one IOI pair, got {n_pairs!r}.")
        return prompt_pairs.ioi_pairs(self.model(model_name), n_pairs, seed, self.settings)

    def patching_faithfulness(
        self, model_name: str, request: faithfulness.FaithfulnessRequest, progress: Progress = _silent
    ) -> faithfulness.FaithfulnessResult:
        """AtP and RelP vs activation patching over IOI pairs (each pair cached on its own)."""
        local = self.local_model(model_name, progress)

        def compute() -> faithfulness.FaithfulnessResult:
            pairs = self.ioi_pairs(model_name, request.n_pairs, request.seed)
            results = []
            for index, pair in enumerate(pairs):
                def pair_progress(fraction, message, index=index):
                    overall = None if fraction is None else (index + fraction) / len(pairs)
                    progress(overall, f"Pair {index + 1} of {len(pairs)}: {message}")

                pair_request = patching.PatchingRequest(
                    pair.clean, pair.corrupted, pair.answer, pair.wrong, ln_rule=request.ln_rule,
                    identity_rule=request.identity_rule, half_rule=request.half_rule, ah_rule=request.ah_rule,
                    heads=request.heads,
                )
                results.append(self.patching(model_name, pair_request, pair_progress))
            return faithfulness.compute(local.name, results, request)

        return self.cached(faithfulness, local, request, compute)

    # ------------------------------------------------------------------ concept depth

    def concept_depth(
        self, model_name: str, request: concept_depth.ConceptDepthRequest, progress: Progress = _silent,
        batch_size: int = 16,
    ) -> concept_depth.ConceptDepthResult:
        """Layer-wise linear probes of one labelled dataset (Jin et al.); representations are cached."""
        _check_texts(request.texts, "Text", self.settings)
        local = self.local_model(model_name, progress)

        def compute() -> concept_depth.ConceptDepthResult:
            model = self.model(model_name, progress)
            features = self.concept_features(model, request, progress, batch_size)
            return concept_depth.compute(local.name, features, request, progress)

        return self.cached(concept_depth, local, request, compute)

    def concept_features(
        self, model: LoadedModel, request: concept_depth.ConceptDepthRequest, progress: Progress = _silent,
        batch_size: int = 16,
    ) -> np.ndarray:
        """(layer, example, d_model) last-token states of the request's texts (with its noise tokens),
        extracted in length-sorted batches, from the store when they are there."""
        sequences = concept_depth.add_noise(
            self._concept_sequences(model, request.texts), request.noise_tokens, _noise_vocabulary(model),
            keep_prefix=len(model.tokenizer("").input_ids), seed=request.seed,
        )
        digest = hashlib.sha256(json.dumps(sequences).encode()).hexdigest()
        key = ActivationKey(model.digest, digest, f"concept_{request.site}")
        cached = self.store.get_activations(key)
        if cached is not None:
            return cached
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # little padding per batch
        features = np.zeros((model.info.n_layers, len(sequences), model.info.d_model), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            progress(start / len(order), f"Extracting representations: {start} of {len(order)} texts")
            states = tracing.last_token_states(model, [sequences[i] for i in rows], request.site)
            features[:, rows] = states.numpy()
        self.store.put_activations(key, features)
        progress(None, "Training the probes")
        return features

    def _concept_sequences(self, model: LoadedModel, texts: tuple[str, ...]) -> list[list[int]]:
        limit = min(self.settings.max_prompt_tokens, model.info.max_positions or self.settings.max_prompt_tokens)
        sequences = [list(model.tokenizer(text).input_ids) for text in texts]
        for index, seq in enumerate(sequences):
            if len(seq) + concept_depth.MAX_NOISE_TOKENS > limit:
                raise BadPrompt(f"Text {index + 1} is {len(seq)} tokens long; with room for noise tokens the "
                                 f"limit is {limit - concept_depth.MAX_NOISE_TOKENS} tokens. Shorten it.")
        return sequences


def _check_texts(texts, what: str, settings: Settings, model: LoadedModel | None = None) -> None:
    """``prompts.check_text`` (with a model: ``prompts.encode``, the token limit too) on each of a set
    of texts; the message says which one is bad."""
    for index, text in enumerate(texts):
        try:
            prompts.check_text(text, settings) if model is None else prompts.encode(model, text, settings)
        except BadPrompt as exc:
            raise BadPrompt(f"{what} {index + 1} of {len(texts)}: {exc}") from exc


def _noise_vocabulary(model: LoadedModel) -> list[int]:
    """Token ids that noise may use: the model's vocabulary without the tokenizer's special tokens."""
    special = set(model.tokenizer.all_special_ids)
    size = min(model.info.vocab_size, len(model.tokenizer))
    return [i for i in range(size) if i not in special]
