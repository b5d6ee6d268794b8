"""Remote execution on NDIF (workbench.remote), tested without a network.

NDIF is replaced by a loopback "server" in this process: nnsight's ``RemoteBackend.request`` (the
websocket + HTTP exchange) is swapped for a function that takes the very bytes nnsight would POST
(``RemoteBackend._serialize``: the traced block's source and the values it reads, modules as
persistent ids), deserialises them against a separately loaded copy of the model with real
weights, as NDIF does, runs them and hands the saved values back. The client model is a
weightless meta skeleton that is never dispatched. What nnsight 0.8 ships is the block's source
text (no graph object exists any more), so "the same intervention graph" is checked as: the
shipped source parses to the same AST as the block the local run executes, the shipped values
equal the local frame's, and the results are bit-identical.
"""

from __future__ import annotations

import ast
import dataclasses
import http.server
import inspect
import json
import linecache
import shutil
import socket
import threading
import time

import pytest
import torch
from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.intervention.serialization import loads
from nnsight.schema.request import RequestModel
from nnsight.tracing.backend import Backend

from workbench import interventions, remote, tracing
from workbench.analyses import depth_use, latent_language, logit_lens
from workbench.analyses.patching import PatchingRequest
from workbench.config import Settings
from workbench.errors import RemoteUnavailable, RemoteUnsupported
from workbench.models import catalog, loader
from workbench.service import Workbench

REPO = "tiny-org/tiny-llama"
IDS = torch.tensor([3, 17, 5, 42, 8, 11])


@pytest.fixture(scope="module")
def server_model(tiny_dirs):
    """NDIF's copy of the model: real weights, loaded the ordinary way."""
    settings = Settings()
    return loader.load(catalog.materialize(catalog.resolve(str(tiny_dirs["llama"])), settings), settings)


@pytest.fixture(scope="module")
def metadata_dir(tiny_dirs, tmp_path_factory):
    """What a remote model has on this machine: config and tokenizer, no weights."""
    folder = tmp_path_factory.mktemp("ndif_metadata")
    for path in tiny_dirs["llama"].iterdir():
        if path.name in remote.METADATA_FILES:
            shutil.copy(path, folder / path.name)
    assert not list(folder.glob("*.safetensors"))
    return folder


def _target(host="http://127.0.0.1:9") -> remote.RemoteTarget:
    return remote.RemoteTarget(REPO, remote.default_model_key(REPO), host, api_key="test-key")


@pytest.fixture
def client_model(server_model, metadata_dir):
    """The model as the workbench holds it in remote mode: a meta skeleton, traces sent away."""
    lm = remote.meta_model(metadata_dir, server_model.spec.rename_table())
    return dataclasses.replace(server_model, lm=lm, tokenizer=lm.tokenizer, remote=_target())


@pytest.fixture
def loopback(monkeypatch, server_model):
    """Replace NDIF by this process: record every request, run it on ``server_model``."""
    sent = []

    def request(backend, request_model, tracer):
        blob = backend._serialize(tracer)  # nnsight's own serialisation, exactly what would be POSTed
        sent.append((request_model, blob, backend))
        saved_lines = dict(linecache.cache)  # deserialize registers the block under the file's name
        try:
            job = RequestModel.deserialize(
                blob, server_model.lm._remoteable_persistent_objects(), compress=request_model.compress
            )
        finally:
            linecache.cache.clear()
            linecache.cache.update(saved_lines)
        frame = job.info.frame
        shipped = dict(frame.f_locals)
        job.execute(job.info.code)  # runs the model and writes the saved values into the frame
        return {k: v for k, v in frame.f_locals.items() if k not in shipped or v is not shipped[k]}

    monkeypatch.setattr(RemoteBackend, "request", request)
    monkeypatch.setattr(remote, "check_reachable", lambda host, timeout=remote.CONNECT_TIMEOUT_S: None)
    return sent


@pytest.fixture
def local_blocks(monkeypatch):
    """Every block a LOCAL trace executes: (AST dump of its body, the caller's locals)."""
    seen = []
    original = Backend.__call__

    def spy(backend, tracer):
        body = ast.Module(body=tracer.node.body, type_ignores=[])
        seen.append((ast.dump(body), dict(tracer.info.frame.f_locals)))
        return original(backend, tracer)

    monkeypatch.setattr(Backend, "__call__", spy)
    return seen


def _shipped(request_model, blob, server_model):
    """(RequestModel, source, globals, locals) of one request, decoded as NDIF decodes it."""
    raw = blob
    if request_model.compress:
        import zstandard

        raw = zstandard.ZstdDecompressor().decompress(blob)
    _tracer, (source, glbls, variables) = loads(raw, server_model.lm._remoteable_persistent_objects())
    return raw, source, glbls, variables


def _same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if hasattr(a, "_module"):  # an envoy: NDIF resolves its module by path (a persistent id)
        return a.path == b.path
    if inspect.isfunction(a):  # an in-trace reduction travels as its source and is compiled again there
        same = ("co_name", "co_argcount", "co_varnames", "co_names")
        return inspect.isfunction(b) and all(getattr(a.__code__, k) == getattr(b.__code__, k) for k in same)
    return a == b


CASES = {
    "residual stream": lambda m: tracing.residual_stream(m, IDS),
    "skip-layer intervention": lambda m: tracing.skip_layers(m, IDS, [None, 0, 1]),
    "neuron ablation": lambda m: tracing.scale_neuron(m, IDS, 1, 7, 0.0),
    "logit lens (decoded in the trace)": lambda m: logit_lens.lens_statistics(m, IDS, 3, 5),
    "latent-language lens (last position)": lambda m: latent_language.last_position_lens(m, IDS, (5, 7)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_remote_request_is_the_local_block(case, client_model, server_model, loopback, local_blocks):
    run = CASES[case]
    local = run(server_model)
    assert len(local_blocks) == 1 and not loopback
    local_ast, local_frame = local_blocks[0]

    remote_result = run(client_model)
    assert len(loopback) == 1 and len(local_blocks) == 1  # nothing ran locally on the client
    request_model, blob, backend = loopback[0]
    raw, source, _globals, variables = _shipped(request_model, blob, server_model)

    # the shipped program is the block the local run executes, statement for statement
    assert ast.dump(ast.parse(source)) == local_ast
    # with the same inputs: every local it reads, equal to the local run's value
    assert variables and set(variables) <= set(local_frame)
    for name, value in variables.items():
        assert _same_value(value, local_frame[name]), name
    # addressed to the hosted model, key in the header only, no weights in the payload
    assert request_model.model_key == remote.default_model_key(REPO)
    assert backend.api_key == "test-key" and b"test-key" not in raw
    assert b"Module:" in raw  # modules travel as ids that NDIF resolves against its own copy
    for name, param in server_model.hf_model.named_parameters():
        assert param.detach().numpy().tobytes()[:64] not in raw, f"{name} is in the payload"
    # and the values that come back are the local ones, bit for bit
    pairs = zip(dataclasses.astuple(local), dataclasses.astuple(remote_result), strict=True) \
        if dataclasses.is_dataclass(local) else zip(local, remote_result, strict=True)
    for mine, theirs in pairs:
        assert torch.equal(mine, theirs)
    assert not client_model.lm.dispatched  # the client never loaded weights
    assert next(client_model.lm._module.parameters()).device.type == "meta"


def test_every_trace_passes_the_remote_options():
    """No second code path: each ``lm.trace`` in tracing.py takes ``**_trace_options(model)``, and no
    traced block reads the LoadedModel (its lock cannot travel in a request)."""
    tree = ast.parse(open(tracing.__file__).read())
    traces = [
        node for node in ast.walk(tree)
        if isinstance(node, ast.With)
        and any(isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "attr", "") == "trace"
                for i in node.items)
    ]
    assert len(traces) >= 7
    for node in traces:
        call = node.items[0].context_expr
        assert any(isinstance(k.value, ast.Call) and getattr(k.value.func, "id", "") == "_trace_options"
                   for k in call.keywords if k.arg is None), ast.unparse(call)
        names = {n.id for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        assert "model" not in names, f"block at line {node.lineno} reads `model`"


def test_hook_and_weight_analyses_refuse_a_remote_model(client_model):
    with pytest.raises(RemoteUnsupported, match="runs remotely on NDIF"):
        interventions.record(client_model, IDS.unsqueeze(0), ("resid",))  # activation patching, AtP, RelP
    with pytest.raises(RemoteUnsupported, match="LAYERLENS_REMOTE=0"):
        client_model.decode(torch.zeros(2, 64))  # lenses decode with the local unembedding
    with pytest.raises(RemoteUnsupported):
        tracing.forward_logits(client_model, IDS)
    assert client_model.device == torch.device("cpu")


# ---------------------------------------------------------------------- failing fast, with messages


def _remote_settings(settings: Settings, **changes) -> Settings:
    return dataclasses.replace(settings, remote=True, **changes)


def test_remote_without_key_fails_before_any_connection(settings, monkeypatch):
    def no_network(*_args, **_kwargs):
        raise AssertionError("tried to connect without an API key")

    monkeypatch.setattr(socket, "create_connection", no_network)
    wb = Workbench(_remote_settings(settings, ndif_api_key=None))
    try:
        with pytest.raises(RemoteUnavailable, match="NDIF_API_KEY"):
            wb.depth_use(REPO, depth_use.DepthUseRequest("The capital of France is"))
    finally:
        wb.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


def _unreachable(settings, host):
    """(seconds until the error, its message) for a depth-use request with NDIF at ``host``."""
    wb = Workbench(_remote_settings(settings, ndif_api_key="test-key", ndif_host=host))
    started = time.monotonic()
    try:
        with pytest.raises(RemoteUnavailable, match="cannot be reached") as caught:
            wb.depth_use(REPO, depth_use.DepthUseRequest("The capital of France is"))
    finally:
        wb.close()
    message = str(caught.value)
    assert "LAYERLENS_REMOTE=0" in message and "test-key" not in message
    return time.monotonic() - started, message


def test_closed_port_fails_at_once(settings):
    elapsed, message = _unreachable(settings, f"http://127.0.0.1:{_closed_port()}")
    assert elapsed < 1.0 and "offline" in message


def test_silent_host_fails_after_the_connect_timeout(settings, monkeypatch):
    """A host that drops packets: the connect gives up after CONNECT_TIMEOUT_S (simulated here, since
    this sandbox answers unroutable addresses through a proxy) and nothing waits longer."""
    asked = []

    def blackhole(address, timeout=None):
        asked.append(timeout)
        time.sleep(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", blackhole)
    elapsed, message = _unreachable(settings, "https://api.ndif.us")
    assert asked == [remote.CONNECT_TIMEOUT_S] and remote.CONNECT_TIMEOUT_S <= 3
    assert elapsed < remote.CONNECT_TIMEOUT_S + 1.0 and "after 3 s" in message


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    deployments: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"deployments": self.deployments}).encode()
        self.send_response(200 if self.path == "/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


@pytest.fixture
def fake_ndif():
    """A local HTTP server answering NDIF's /status with one running deployment of REPO."""
    _StatusHandler.deployments = {
        REPO: {"repo_id": REPO, "model_key": remote.default_model_key(REPO),
               "deployment_level": "HOT", "application_state": "RUNNING"},
        "big/cold": {"repo_id": "big/cold", "deployment_level": "COLD", "application_state": "RUNNING"},
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_model_not_hosted_names_what_is(settings, fake_ndif):
    wb = Workbench(_remote_settings(settings, ndif_api_key="test-key", ndif_host=fake_ndif))
    try:
        with pytest.raises(RemoteUnavailable, match="does not host 'big/cold'") as caught:
            wb.depth_use("big/cold", depth_use.DepthUseRequest("The capital of France is"))
    finally:
        wb.close()
    assert REPO in str(caught.value)


def test_workbench_runs_an_analysis_remotely(settings, fake_ndif, metadata_dir, tiny_dirs, loopback, monkeypatch):
    """The whole service on a hosted hub id: checks pass against the fake NDIF, only config and
    tokenizer are on this machine, traces go through the loopback, and the result equals the
    same analysis on the local copy. Hook/decode analyses say they cannot run remotely."""
    monkeypatch.setattr(remote, "fetch_metadata", lambda repo_id: metadata_dir)
    request = depth_use.DepthUseRequest("The capital of France is")
    wb = Workbench(_remote_settings(settings, ndif_api_key="test-key", ndif_host=fake_ndif))
    try:
        remote_result = wb.depth_use(REPO.upper(), request)  # NDIF's spelling wins
        model = wb.model(REPO.upper())
        local_result = wb.depth_use(str(tiny_dirs["llama"]), request)  # a local directory still runs here
        lens_request = logit_lens.LogitLensRequest("The capital of France is", target=" Paris")
        remote_lens = wb.logit_lens(REPO.upper(), lens_request)  # decoded inside the trace, on "NDIF"
        local_lens = wb.logit_lens(str(tiny_dirs["llama"]), lens_request)
        with pytest.raises(RemoteUnsupported):
            wb.patching(REPO.upper(), PatchingRequest(  # plain PyTorch hooks cannot travel
                "When Mary and John went to the store, John gave a drink to",
                "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"))
        local_digest = wb.local_model(str(tiny_dirs["llama"])).digest
    finally:
        wb.close()
    assert model.remote is not None and model.remote.repo_id == REPO and not model.lm.dispatched
    # depth use: the sublayer trace and the batched skip-layer trace; logit lens: one trace
    assert len(loopback) == 3
    for field in ("attn_rel_norm", "mlp_rel_norm", "skip_kl_last", "skip_resid_change"):
        assert (getattr(remote_result, field) == getattr(local_result, field)).all(), field
    for field in ("top_ids", "top_tokens", "top_probs", "kl_to_final", "target_rank", "target_prob"):
        assert (getattr(remote_lens, field) == getattr(local_lens, field)).all(), field
    assert model.digest != local_digest  # remote results are cached under NDIF's model, apart
