"""``Workbench``: the stable API that pages, the CLI, scripts and notebooks call.

A thin facade over ``workbench.runtime``: one method per analysis, each running that
analysis through the generic runtime (check input -> result cache -> model pool ->
``analysis.run`` -> store), plus the few queries and controls that are not analyses
(the tuned-lens trainer, neuron look-ups, IOI pairs, the next-token panel). Its method
names and signatures, and the request and result types, are kept stable.

    from workbench.service import Workbench
    wb = Workbench()
    result = wb.logit_lens("smollm2-135m", LogitLensRequest("The capital of France is", " Paris"))
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from workbench import prompt_pairs, prompts, tracing
from workbench.analyses import (
    Analysis,
    Progress,
    attention_sinks,
    circuit,
    concept_depth,
    decoder_lens,
    depth_use,
    future_lens,
    latent_language,
    lens_comparison,
    linear_shortcut,
    logit_lens,
    neuron_classes,
    neuron_contexts,
    neuron_effect,
    neuron_vocab,
    patching,
    patching_faithfulness,
    patchscope,
    shortcut_grid,
    silent,
    sink_levels,
    tuned_lens,
)
from workbench.config import Settings, load_settings
from workbench.errors import BadRequest
from workbench.lens_fitting import FitConfig, FitStatus, FittedLens
from workbench.lens_training import LensTrainer, TrainingStatus, checkpoint_path, saved_status
from workbench.models import catalog
from workbench.models.catalog import LocalModel
from workbench.models.loader import LoadedModel
from workbench.runtime import Context, Runtime
from workbench.store import Store

_silent = silent
_BATCH_SIZE = concept_depth.BATCH_SIZE  # (the method below shadows the module's name in the class)


class Workbench:
    """One per process: holds the store, the model pool and the trainers (through its runtime)."""

    def __init__(self, settings: Settings | None = None, store: Store | None = None):
        self.settings = settings or load_settings()
        self.store = store or Store(self.settings.database_path, max_bytes=self.settings.cache_max_bytes)
        self.runtime = Runtime(self.settings, self.store)

    def close(self) -> None:
        """Stop this workbench's background jobs (tuned-lens training, lens fits), then close the store."""
        self.runtime.trainers.stop_all()
        self.runtime.fits.stop_all()
        self.store.close()

    def run(self, analysis: Analysis, model_name: str, request, progress: Progress = _silent, on_partial=None):
        """Any analysis of ``workbench.analyses.ANALYSES`` by its ``Analysis`` object; ``on_partial``
        receives partial results of analyses that report them while running."""
        return self.runtime.run(analysis, model_name, request, progress, on_partial)

    # ------------------------------------------------------------------ models

    def local_model(self, name: str, progress: Progress = _silent) -> LocalModel:
        """The model's directory and digest, converting bundled weights on first use."""
        return self.runtime.pool.local(name, progress)

    def model(self, name: str, progress: Progress = _silent) -> LoadedModel:
        """The loaded model (once per process)."""
        return self.runtime.pool.load(name, progress)

    def check_linked_model(self, name: str) -> None:
        """Raise ``ModelNotAllowed`` unless a shared link or an export bundle may name this model:
        a catalog model, a hub id, or a directory under the model roots (``LAYERLENS_MODEL_ROOTS``).
        Reads nothing in the directory; a name the user typed needs no check."""
        catalog.check_linked(name, self.settings)

    # ------------------------------------------------------------------ lenses

    def logit_lens(self, model_name: str, request: logit_lens.LogitLensRequest,
                   progress: Progress = _silent) -> logit_lens.LogitLensResult:
        return self.run(logit_lens.ANALYSIS, model_name, request, progress)

    def latent_language(self, model_name: str, request: latent_language.LatentLanguageRequest | None = None,
                        progress: Progress = _silent) -> latent_language.LatentLanguageResult:
        """Per layer, the lens probability of the answer's word in each candidate language (Wendler et al.
        2024; Zhong et al. 2025): ``p_first`` (first token) and ``p_whole`` (whole word, teacher-forced
        product of the same layer's conditionals), (prompt, language, slot). Default request: German ->
        French translation, English as the pivot, single-token words."""
        return self.run(latent_language.ANALYSIS, model_name, request or latent_language.LatentLanguageRequest(),
                        progress)

    def linear_shortcut(self, model_name: str, request: linear_shortcut.LinearShortcutRequest,
                        progress: Progress = _silent) -> tuned_lens.LensComparisonResult:
        """The linear shortcut (Din et al. 2023), fitted in closed form, against the logit lens."""
        return self.run(linear_shortcut.ANALYSIS, model_name, request, progress)

    def decoder_lens(self, model_name: str, request: decoder_lens.DecoderLensRequest,
                     progress: Progress = _silent) -> decoder_lens.DecoderLensResult:
        """DecoderLens (Langedijk et al. 2024) on an encoder-decoder model (T5, BART): the decoder's greedy
        output from every encoder layer's states."""
        return self.run(decoder_lens.ANALYSIS, model_name, request, progress)

    def patchscope(self, model_name: str, request: patchscope.PatchscopeRequest,
                   progress: Progress = _silent) -> patchscope.PatchscopeResult:
        """Patchscope (Ghandeharioun et al. 2024): source states decoded by the model in a target prompt."""
        return self.run(patchscope.ANALYSIS, model_name, request, progress)

    def shortcut_grid(self, model_name: str, request: shortcut_grid.ShortcutGridRequest,
                      progress: Progress = _silent) -> shortcut_grid.ShortcutGridResult:
        """Maps between layers (Din et al. 2023) against skipping the blocks they replace."""
        return self.run(shortcut_grid.ANALYSIS, model_name, request, progress)

    def future_lens(self, model_name: str, request: future_lens.FutureLensRequest,
                    progress: Progress = _silent, on_partial=None) -> future_lens.FutureLensResult:
        """The linear future lens (Pal et al. 2023): tokens t+1..t+3 predicted from one state h_l(t)."""
        return self.run(future_lens.ANALYSIS, model_name, request, progress, on_partial)

    def tuned_lens_trainer(self, model_name: str, config: tuned_lens.TunedLensConfig,
                           progress: Progress = _silent) -> LensTrainer:
        """The (one per process) trainer of ``config``'s lens for this model, resumed from its checkpoint."""
        return self.runtime.trainers.trainer(self.model(model_name, progress), config)

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
        trainer = self.runtime.trainers.running(local.digest, config)
        if trainer is not None:
            return trainer.status()
        return saved_status(checkpoint_path(self.settings.cache_dir, local.digest, config))

    # ------------------------------------------------------------------ fitted lenses (lens_fitting)

    def start_lens_fit(self, model_name: str, config: FitConfig, progress: Progress = _silent) -> FitStatus:
        """Fit ``config``'s lens (linear shortcut or Jacobian lens) in the background, unless it is
        stored already or being fitted; the status says which."""
        return self.runtime.fits.job(self.model(model_name, progress), config).start()

    def stop_lens_fit(self, model_name: str, config: FitConfig) -> FitStatus:
        """Stop a running fit of ``config``'s lens (it stores nothing); the status after it."""
        job = self.runtime.fits.existing(self.local_model(model_name).digest, config)
        if job is None:
            return self.lens_fit_status(model_name, config)
        return job.stop(wait=True)

    def lens_fit_status(self, model_name: str, config: FitConfig) -> FitStatus:
        """The running fit's status, else what the store holds (no model is loaded for that)."""
        return self.runtime.fits.status(self.local_model(model_name).digest, config)

    def fitted_lens(self, model_name: str, config: FitConfig, progress: Progress = _silent) -> FittedLens:
        """The stored lens of ``config``, else the running fit's once it ends, else fitted now and stored."""
        return Context(self.runtime, self.local_model(model_name, progress), model_name).fitted_lens(config, progress)

    def compare_lenses(
        self, model_name: str, prompt: str, target: str = "", config: tuned_lens.TunedLensConfig | None = None,
        eval_chunks: int = 4, progress: Progress = _silent,
    ) -> tuned_lens.LensComparisonResult:
        """Logit vs tuned lens on held-out text and on ``prompt``, with the lens as trained so far."""
        config = config or tuned_lens.TunedLensConfig()
        prompts.check_text(prompt, self.settings)
        model = self.model(model_name, progress)  # prompt length and target checked before the training state
        prompts.encode(model, prompt, self.settings)
        if target:
            prompts.single_token_id(model, target)
        lens, step = self.tuned_lens_trainer(model_name, config, progress).snapshot()
        if step == 0:
            raise BadRequest("This tuned lens has not been trained yet: start training first.")
        request = tuned_lens.LensComparisonRequest(prompt, target, config, step, eval_chunks)
        return self.run(tuned_lens.with_lens(lens), model_name, request, progress)

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

    # ------------------------------------------------------------------ depth use, attention sinks

    def depth_use(self, model_name: str, request: depth_use.DepthUseRequest,
                  progress: Progress = _silent) -> depth_use.DepthUseResult:
        return self.run(depth_use.ANALYSIS, model_name, request, progress)

    def attention_sinks(self, model_name: str, request: attention_sinks.SinkProbeRequest,
                        progress: Progress = _silent) -> attention_sinks.SinkProbeResult:
        return self.run(attention_sinks.ANALYSIS, model_name, request, progress)

    def sink_levels(self, model_name: str, request: sink_levels.SinkLevelsRequest,
                    progress: Progress = _silent) -> sink_levels.SinkLevelsResult:
        return self.run(sink_levels.ANALYSIS, model_name, request, progress)

    # ------------------------------------------------------------------ neurons

    def neuron_classes(self, model_name: str, request: neuron_classes.NeuronClassRequest,
                       progress: Progress = _silent) -> neuron_classes.NeuronClassResult:
        return self.run(neuron_classes.ANALYSIS, model_name, request, progress)

    def neuron_vocab(self, model_name: str, request: neuron_vocab.NeuronVocabRequest,
                     progress: Progress = _silent) -> neuron_vocab.NeuronVocabResult:
        return self.run(neuron_vocab.ANALYSIS, model_name, request, progress)

    def neuron_effect(self, model_name: str, request: neuron_effect.NeuronEffectRequest,
                      progress: Progress = _silent) -> neuron_effect.NeuronEffectResult:
        return self.run(neuron_effect.ANALYSIS, model_name, request, progress)

    def neuron_contexts(self, model_name: str, request: neuron_contexts.NeuronContextsRequest | None = None,
                        progress: Progress = _silent) -> neuron_contexts.NeuronContextsResult:
        """Top-activating corpus contexts of every neuron (the bundled corpus unless told otherwise)."""
        return self.run(neuron_contexts.ANALYSIS, model_name, request or neuron_contexts.default_request(), progress)

    def neuron_search_token(self, model_name: str, token: str, fold_norm: bool = False,
                            limit: int = 20) -> list[tuple[int, int, float]]:
        """(layer, neuron, cosine) of the neurons whose w_out best matches ``token``'s unembedding."""
        model = self.model(model_name)
        return neuron_vocab.search_by_token(model, prompts.single_token_id(model, token), fold_norm, limit)

    def neurons_of_class(self, model_name: str, request: neuron_classes.NeuronClassRequest, class_name: str,
                         layer: int | None = None, limit: int = 50) -> list[tuple[int, int, float]]:
        """(layer, neuron, cos(in, out)) of the neurons in one class, strongest first."""
        return neuron_classes.neurons_of_class(self.neuron_classes(model_name, request), class_name, layer, limit)

    # ------------------------------------------------------------------ patching

    def patching(self, model_name: str, request: patching.PatchingRequest,
                 progress: Progress = _silent) -> patching.PatchingResult:
        return self.run(patching.ANALYSIS, model_name, request, progress)

    def ioi_pairs(self, model_name: str, n_pairs: int, seed: int = 0) -> list[prompt_pairs.PromptPair]:
        """IOI clean/corrupted pairs whose names are single tokens for this model."""
        if not isinstance(n_pairs, int) or n_pairs < 1:
            raise BadRequest(f"Ask for at least one IOI pair, got {n_pairs!r}.")
        return prompt_pairs.ioi_pairs(self.model(model_name), n_pairs, seed, self.settings)

    def patching_faithfulness(self, model_name: str, request: patching_faithfulness.FaithfulnessRequest,
                              progress: Progress = _silent) -> patching_faithfulness.FaithfulnessResult:
        return self.run(patching_faithfulness.ANALYSIS, model_name, request, progress)

    # ------------------------------------------------------------------ concept depth

    def concept_depth(self, model_name: str, request: concept_depth.ConceptDepthRequest,
                      progress: Progress = _silent, batch_size: int = _BATCH_SIZE,
                      ) -> concept_depth.ConceptDepthResult:
        return self.run(concept_depth.with_batch_size(batch_size), model_name, request, progress)

    def concept_features(self, model: LoadedModel, request: concept_depth.ConceptDepthRequest,
                         progress: Progress = _silent, batch_size: int = _BATCH_SIZE) -> np.ndarray:
        """(block, example, d_model) last-token states of the request's texts, from the store when there."""
        def activations(site, digest, compute):
            return self.runtime.activations(model.digest, site, digest, compute)

        return concept_depth.features(model, request, self.settings, activations, progress, batch_size)

    def lens_comparison(self, model_name: str, request: lens_comparison.LensComparisonRequest,
                        progress: Progress = _silent) -> lens_comparison.LensComparisonResult:
        """Every lens side by side on one prompt and on held-out text. A request naming the tuned lens is
        compared at the step it is trained to now (``tuned_step`` filled in)."""
        if "tuned" in request.lenses:
            config = tuned_lens.TunedLensConfig(request.corpus, request.chunk_tokens)
            step = self.tuned_lens_trainer(model_name, config, progress).snapshot()[1]
            if step == 0:
                raise BadRequest("The tuned lens has not been trained for this model yet: train it on the Tuned "
                                 "lens page first, or leave it out.")
            request = dataclasses.replace(request, tuned_step=step)
        return self.run(lens_comparison.ANALYSIS, model_name, request, progress)

    def circuit(self, model_name: str, request: circuit.CircuitRequest,
                progress: Progress = _silent) -> circuit.CircuitResult:
        """Edge attribution over a task (EAP, RelP, EAP-IG), circuits of the top edges verified by ablation."""
        return self.run(circuit.ANALYSIS, model_name, request, progress)

    def head_attention(self, model_name: str, text: str, layer: int, head: int,
                       progress: Progress = _silent) -> tuple[tuple[str, ...], np.ndarray]:
        """One attention head's probabilities (query, key) on ``text``: its tokens and a (seq, seq) array."""
        model = self.model(model_name, progress)
        if not 0 <= layer < model.info.n_layers or not 0 <= head < model.info.n_heads:
            raise BadRequest(f"{model.name} has {model.info.n_layers} layers of {model.info.n_heads} heads; "
                             f"there is no head {head} in layer {layer}.")
        encoded = prompts.encode(model, text, self.settings)
        trace = tracing.attention_and_states(model, encoded.ids)
        return tuple(encoded.tokens), trace.attn[layer, head].numpy()
