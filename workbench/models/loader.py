"""Loading a materialized model directory into an nnsight-wrapped model.

Owns ``LoadedModel``: the nnsight model, its tokenizer, its ``ArchitectureSpec``,
its shape facts (``ModelInfo``), its content digest and the lock that
serialises every trace on it (nnsight traces on one model from several threads
break). Loading validates the architecture against the adapter, so an
unsupported model fails here with a message naming what is missing. Shape
facts are read from the config by role through the adapter (no config field
names here). Nothing here reads the environment: whether loading may reach the
hub comes from ``Settings`` when ``load`` runs (``catalog.hub_guard``).

What a directory may make this process run: never its own Python code (``trust_remote_code`` is
always off, so a config's ``auto_map`` is ignored), and only safetensors weights unless the user
allows pickled checkpoints (``Settings.allow_pickle``, ``LAYERLENS_ALLOW_PICKLE=1``): reading a
pickle can run code.

Encoder-decoder models (T5, BART: rows of ``adapter.ENCODER_DECODER_ARCHITECTURES``) load only through
``load_encoder_decoder`` into a ``LoadedEncoderDecoder`` (a plain ``AutoModelForSeq2SeqLM``, no nnsight: its
only user, the DecoderLens, runs the model's own encoder and ``generate``), under the same file rules. ``load``
still refuses them (``adapter.spec_for_model_type``), so every decoder-only analysis stops with one message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from workbench.config import Settings
from workbench.errors import ModelLoadError, RemoteUnsupported, UnsupportedArchitecture
from workbench.models import adapter
from workbench.models.catalog import LocalModel, hub_guard
from workbench.remote import RemoteTarget, meta_model

# transformers' loading flips process-global switches (weight init, tying); two loads in two
# threads at once leave them wrong and later models come back with untied, random lm_heads.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelInfo:
    """Shape facts every analysis and figure needs."""

    model_type: str
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    max_positions: int | None
    logit_softcap: float | None = None  # final logit soft-cap (Gemma), applied after the unembedding


@dataclass
class LoadedModel:
    name: str
    digest: str
    note: str
    lm: object  # nnsight TransformersModel, modules renamed to the adapter vocabulary
    tokenizer: object
    spec: adapter.ArchitectureSpec
    info: ModelInfo
    # Re-entrant: held by every trace and every decode (a plain module call while another thread
    # traces the same model could be caught by that trace), and a training step holds it across both.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Set for a model that runs on NDIF (workbench.remote): a weightless skeleton here, traces go there.
    remote: RemoteTarget | None = None

    @property
    def hf_model(self) -> torch.nn.Module:
        """The underlying transformers model (no nnsight wrapping)."""
        if self.remote is not None:  # hooks, weight reads, local decoding: none can run remotely
            raise RemoteUnsupported(REMOTE_WEIGHTS_MESSAGE.format(name=self.name))
        return self.lm._module

    def module(self, path: str) -> torch.nn.Module:
        return self.hf_model.get_submodule(path)

    @property
    def device(self) -> torch.device:
        if self.remote is not None:
            return torch.device("cpu")  # inputs leave from here; NDIF places them on its devices
        return next(self.hf_model.parameters()).device

    def decode(self, resid: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Residual-stream vectors -> logits on the CPU, through the model's ``Unembed`` (``lenses.decode``)."""
        from workbench.lenses import decode

        return decode(self, resid, grad=grad)


def _model_info(config, spec: adapter.ArchitectureSpec, n_layers: int) -> ModelInfo:
    """Shape facts from the config, each read by role through the adapter; ``n_layers`` counts the blocks."""

    def read(role: str):
        return adapter.config_value(spec, config, role)

    return ModelInfo(
        model_type=config.model_type,
        family=spec.family,
        n_layers=n_layers,
        d_model=read("d_model"),
        n_heads=read("n_heads"),
        n_kv_heads=read("n_kv_heads"),
        vocab_size=read("vocab_size"),
        max_positions=read("max_positions"),
        logit_softcap=adapter.logit_softcap(spec, config),
    )


def _read_spec(local: LocalModel) -> adapter.ArchitectureSpec:
    """The adapter row for the model in ``local``, from its config (the topology may be a config switch)."""
    return adapter.spec_for_config(_read_config(local))


def _read_config(local: LocalModel):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(local.path, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"Could not read the config of {local.path}: {_first_line(exc)}") from exc


def load(local: LocalModel, settings: Settings) -> LoadedModel:
    """Load the model in ``local`` for tracing, on the configured device, eager attention.

    The hub stays offline while loading unless ``settings`` allow it (``catalog.hub_guard``), so a
    missing local path never turns into a hub lookup.
    """
    with hub_guard(settings):
        if local.remote is not None:
            return _load_remote(local)
        return _load_local(local, settings)


def _load_local(local: LocalModel, settings: Settings) -> LoadedModel:
    from nnsight import TransformersModel

    spec = _read_spec(local)
    use_safetensors = _check_files(local, settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        with _LOAD_LOCK:
            lm = TransformersModel(
                str(local.path.resolve()),
                task="text-generation",
                dispatch=True,
                attn_implementation="eager",
                dtype=torch.float32,
                device_map=_device(settings),
                rename=spec.rename_table(),
                trust_remote_code=False,  # a directory's own code never runs here
                use_safetensors=use_safetensors,
            )
    except UnsupportedArchitecture:
        raise
    except Exception as exc:
        raise ModelLoadError(f"Could not load the model in {local.path}: {_load_failure(exc)}") from exc
    hf_model = lm._module
    hf_model.eval()
    adapter.validate(spec, hf_model, hf_model.config.model_type)
    _check_complete_weights(hf_model, local)
    _check_tied_unembedding(hf_model, spec, local)
    return _loaded(local, lm, spec)


def _loaded(local: LocalModel, lm, spec: adapter.ArchitectureSpec) -> LoadedModel:
    """The LoadedModel of a validated nnsight model (real weights, or NDIF's meta skeleton)."""
    module = lm._module
    return LoadedModel(
        name=local.name,
        digest=local.digest,
        note=local.note,
        lm=lm,
        tokenizer=lm.tokenizer,
        spec=spec,
        info=_model_info(module.config, spec, len(module.get_submodule(spec.layers))),
        remote=local.remote,
    )


def _check_tied_unembedding(hf_model: torch.nn.Module, spec: adapter.ArchitectureSpec, local: LocalModel) -> None:
    """A model with tied embeddings must decode with its embedding matrix, not a random lm_head."""
    if not adapter.config_value(spec, hf_model.config, "tied_embeddings"):
        return
    embed = hf_model.get_submodule(spec.embed).weight
    unembed = hf_model.get_submodule(spec.unembed).weight
    if embed.shape != unembed.shape or not torch.equal(embed, unembed):
        raise ModelLoadError(
            f"{local.path} declares tied embeddings but its unembedding differs from the embedding "
            "after loading; the weights are inconsistent."
        )


def _device(settings: Settings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tekken.json")
PICKLE_OPT_IN = "LAYERLENS_ALLOW_PICKLE=1"


def _check_files(local: LocalModel, settings: Settings) -> bool:
    """A directory without weights or tokenizer fails here, with a message naming what is missing;
    so does one with only pickled weights unless the user allowed them. Returns whether to load
    safetensors (True) or the pickled checkpoint (False)."""
    names = {p.name for p in local.path.iterdir() if p.is_file()}
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        raise ModelLoadError(
            f"{local.path} has a config.json but no weights (model.safetensors or pytorch_model.bin). "
            "Copy the weight files into the directory, or save the model there with save_pretrained."
        )
    safetensors = any(name.endswith(".safetensors") for name in names)
    if not safetensors and not settings.allow_pickle:
        pickled = ", ".join(sorted(name for name in names if name.endswith(WEIGHT_SUFFIXES)))
        raise ModelLoadError(
            f"{local.name} has only pickled weights ({pickled}), "
            "and reading a pickle can run code. Convert them to safetensors (save_pretrained), or, if you trust "
            f"the files, start the workbench with {PICKLE_OPT_IN}."
        )
    if not names.intersection(TOKENIZER_FILES):
        raise ModelLoadError(
            f"{local.path} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ...). "
            "Save the model's tokenizer into the same directory (tokenizer.save_pretrained)."
        )
    return safetensors


def _load_failure(exc: Exception) -> str:
    """The useful last line of a transformers loading error (it can embed whole tracebacks)."""
    text = str(exc)
    if "ignore_mismatched_sizes" in text or "size mismatch" in text:
        return ("some weight shapes do not match config.json (hidden size, vocabulary size, ...): "
                "the config and the weights belong to different models.")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(exc).__name__


def _first_line(exc: Exception, limit: int = 300) -> str:
    """The first line of an error message, cut to ``limit`` characters (transformers adds pages of advice)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def _check_complete_weights(hf_model: torch.nn.Module, local: LocalModel) -> None:
    """Every parameter the config asks for must come from the safetensors files; transformers would
    otherwise initialise the missing ones at random (e.g. a config with more layers than the weights)."""
    files = sorted(local.path.glob("*.safetensors"))
    if not files:
        return  # .bin checkpoints: names are not readable without loading them
    from safetensors import safe_open

    stored: set[str] = set()
    for path in files:
        with safe_open(str(path), "pt") as handle:
            stored.update(handle.keys())
    stored = _loaded_names(hf_model, stored)
    expected = set(hf_model.state_dict())
    tied = set(getattr(hf_model, "all_tied_weights_keys", None) or {})
    missing = sorted(expected - stored - tied)
    if missing and len(expected & stored) * 2 >= len(expected):  # same naming scheme, some tensors absent
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelLoadError(
            f"{local.path} lacks {len(missing)} weight tensor(s) that its config.json asks for ({shown}); "
            "they would be random. The weights are incomplete or belong to a different config "
            "(check num_hidden_layers and the other sizes)."
        )


def _loaded_names(hf_model: torch.nn.Module, names: set[str]) -> set[str]:
    """Checkpoint tensor names as the model names them after loading: transformers renames some
    (GPT-NeoX / Pythia checkpoints store the unembedding as ``embed_out``, loaded as ``lm_head``)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    renamings = [t for t in get_model_conversion_mapping(hf_model) if type(t) is WeightRenaming]
    renamed = set()
    for name in names:
        for renaming in renamings:
            name, _ = renaming.rename_source_key(name)
        renamed.add(name)
    return renamed


# ---------------------------------------------------------------------- remote (NDIF) models

REMOTE_WEIGHTS_MESSAGE = (
    "This needs the weights of {name} on this machine (PyTorch hooks, weight reads or decoding with its "
    "unembedding), but {name} runs remotely on NDIF, where only nnsight traces can go. Run it on a local "
    "model (a catalog model or a local directory), or switch remote execution off (LAYERLENS_REMOTE=0)."
)


def _load_remote(local: LocalModel) -> LoadedModel:
    """A model run on NDIF: its skeleton on the meta device from config and tokenizer (no weights)."""
    spec = _read_spec(local)
    try:
        with _LOAD_LOCK:
            lm = meta_model(local.path, spec.rename_table())
    except Exception as exc:
        raise ModelLoadError(f"Could not build {local.name} from its config and tokenizer: {exc}") from exc
    skeleton = lm._module
    adapter.validate(spec, skeleton, skeleton.config.model_type)
    return _loaded(local, lm, spec)


# ---------------------------------------------------------------------- encoder-decoder models


@dataclass
class LoadedEncoderDecoder:
    """An encoder-decoder model (T5, BART) for the analyses that read both stacks (the DecoderLens)."""

    name: str
    digest: str
    note: str
    hf_model: torch.nn.Module  # AutoModelForSeq2SeqLM, eval mode
    tokenizer: object
    spec: adapter.EncoderDecoderSpec
    info: ModelInfo  # n_layers: encoder blocks; n_heads / n_kv_heads: 0 (not read)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    remote: RemoteTarget | None = None  # always None: NDIF models are refused at load

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def module(self, path: str) -> torch.nn.Module:
        return self.hf_model.get_submodule(path)


def encoder_decoder_spec_for(local: LocalModel) -> adapter.EncoderDecoderSpec:
    """The encoder-decoder row of the model in ``local``, read from its config; a decoder-only model is
    refused with a message saying what to open instead."""
    model_type = getattr(_read_config(local), "model_type", None) or "unknown"
    if model_type not in adapter.ENCODER_DECODER:
        try:
            adapter.spec_for_model_type(model_type)
        except UnsupportedArchitecture:
            pass  # neither kind: encoder_decoder_spec names the known rows
        else:
            raise UnsupportedArchitecture(
                f"{local.name} is a decoder-only model ('{model_type}'); this analysis needs an encoder-decoder "
                "model (T5, BART). Open one by typing its local directory or hub id in the sidebar's Other field."
            )
    return adapter.encoder_decoder_spec(model_type)


def load_encoder_decoder(local: LocalModel, settings: Settings) -> LoadedEncoderDecoder:
    """Load the encoder-decoder model in ``local`` (safetensors only unless pickles are allowed, never the
    directory's own code), in float32 on the configured device."""
    with hub_guard(settings):
        if local.remote is not None:
            raise RemoteUnsupported(REMOTE_WEIGHTS_MESSAGE.format(name=local.name))
        spec = encoder_decoder_spec_for(local)
        use_safetensors = _check_files(local, settings)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            with _LOAD_LOCK:
                hf_model = AutoModelForSeq2SeqLM.from_pretrained(
                    str(local.path.resolve()), dtype=torch.float32, device_map=_device(settings),
                    attn_implementation="eager", trust_remote_code=False, use_safetensors=use_safetensors,
                )
                tokenizer = AutoTokenizer.from_pretrained(str(local.path.resolve()), trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"Could not load the model in {local.path}: {_load_failure(exc)}") from exc
    hf_model.eval()
    model_type = hf_model.config.model_type
    adapter.validate_encoder_decoder(spec, hf_model, model_type)
    _check_complete_weights(hf_model, local)
    limit = getattr(tokenizer, "model_max_length", None)
    return LoadedEncoderDecoder(
        name=local.name, digest=local.digest, note=local.note, hf_model=hf_model, tokenizer=tokenizer, spec=spec,
        info=ModelInfo(
            model_type=model_type, family=spec.family, n_layers=len(hf_model.get_submodule(spec.encoder.layers)),
            d_model=getattr(hf_model.config, spec.d_model_attr), n_heads=0, n_kv_heads=0,
            vocab_size=hf_model.get_submodule(spec.unembed).weight.shape[0],
            max_positions=limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None,
        ),
    )
