"""Cache schema versions: a v1 file migrates in place (results read back bit-exactly under the same
keys), a failed migration leaves the file as it was, files this code cannot read name the rebuild
command, and a rebuild moves the file aside (never deletes it)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import duckdb
import numpy as np
import pytest

from workbench.analyses import request_digest, request_json
from workbench.analyses.logit_lens import LogitLensRequest, LogitLensResult
from workbench.errors import CacheError, CacheLocked
from workbench.store import codec, schema
from workbench.store.duckdb_store import SCHEMA_VERSION, ActivationKey, ResultKey, Store

# The v1 layout is the store's own ``schema.SCHEMA_V1`` (every new file starts from it), pinned here by
# the digest of the DDL as shipped (commit 1e42942, whitespace collapsed); the v1 write statements below
# are frozen as shipped too. So a change to the store module cannot quietly change what "a v1 file" means.
V1_DDL_SHA256 = "9e7e4591c5638d9de2a47bbe8bb8852b1fa9f3477921e59b72c93177f4fac124"
REBUILD = "python -m workbench cache rebuild"


def v1_digest(*parts) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def write_v1_file(path, result, request, acts) -> None:
    """A cache exactly as the v1 code wrote it: one logit-lens result and one activation set."""
    con = duckdb.connect(str(path))
    con.execute(schema.SCHEMA_V1)
    con.execute("INSERT INTO store_meta VALUES ('schema_version', '1')")
    result_id = v1_digest(1, "logit_lens", 1, "model-digest", request_digest(request))
    scalars_json, arrays = codec.encode(result)
    for name, blob in arrays.items():
        con.execute("INSERT INTO result_arrays VALUES (?, ?, ?)", [result_id, name, blob])
    con.execute(
        "INSERT INTO results (result_id, analysis, analysis_version, model_name, model_digest, request_digest,"
        " request_json, scalars_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [result_id, "logit_lens", 1, "tiny-llama", "model-digest", request_digest(request), request_json(request),
         scalars_json],
    )
    activation_id = v1_digest(1, "model-digest", "input-digest", "resid")
    n_layers, n_positions, d_model = acts.shape
    con.execute(f"CREATE TABLE activations_d{d_model} (activation_id VARCHAR, layer SMALLINT, position INTEGER,"
                f" vec FLOAT[{d_model}], PRIMARY KEY (activation_id, layer, position))")
    for layer in range(n_layers):
        for position in range(n_positions):
            con.execute(f"INSERT INTO activations_d{d_model} VALUES (?, ?, ?, ?)",
                        [activation_id, layer, position, acts[layer, position].tolist()])
    con.execute("INSERT INTO activation_sets (activation_id, model_digest, input_digest, site, n_layers,"
                " n_positions, d_model) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [activation_id, "model-digest", "input-digest", "resid", n_layers, n_positions, d_model])
    con.close()


def test_the_v1_layout_is_the_one_shipped():
    shipped = hashlib.sha256(" ".join(schema.SCHEMA_V1.split()).encode()).hexdigest()
    assert shipped == V1_DDL_SHA256, "v1 files exist as shipped: change the layout with a migration instead"


@pytest.fixture
def lens_result(workbench, tiny_dirs) -> tuple[LogitLensRequest, LogitLensResult]:
    request = LogitLensRequest("The capital of France is", target=" Paris")
    return request, workbench.logit_lens(str(tiny_dirs["llama"]), request)


def stored_version(path) -> str:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT value FROM store_meta WHERE name = 'schema_version'").fetchone()[0]
    finally:
        con.close()


def columns(path, table) -> list[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
    finally:
        con.close()


def test_v1_file_migrates_and_reads_back_bit_exactly(tmp_path, lens_result):
    request, result = lens_result
    acts = np.random.default_rng(3).standard_normal((3, 5, 16)).astype(np.float32)
    acts[0, 0, :2] = [np.float32(-0.0), np.float32(1e-40)]  # a subnormal survives too
    path = tmp_path / "v1.duckdb"
    write_v1_file(path, result, request, acts)

    result_key = ResultKey("logit_lens", 1, "model-digest", request_digest(request))
    activation_key = ActivationKey("model-digest", "input-digest", "resid")
    with Store(path) as store:
        back = store.get_result(result_key, LogitLensResult)  # the v1 key still finds it
        assert back is not None and codec.same_result(back, result)
        assert store.get_activations(activation_key).tobytes() == acts.tobytes()
        assert store.model_digests("tiny-llama") == ["model-digest"]
        # Migrated sizes are what the new code records for the same entries.
        migrated_bytes = store.stored_bytes()
        store.put_result(ResultKey("logit_lens", 1, "other", "r"), result, model_name="x",
                         request_json=request_json(request))
        store.put_activations(ActivationKey("other", "i", "resid"), acts)
        assert store.stored_bytes() == 2 * migrated_bytes
    assert stored_version(path) == str(SCHEMA_VERSION) == "2"
    assert {"n_bytes", "last_used_at"} <= set(columns(path, "results"))
    assert {"n_bytes", "last_used_at"} <= set(columns(path, "activation_sets"))
    with Store(path) as store:  # reopening a migrated file migrates nothing again
        assert codec.same_result(store.get_result(result_key, LogitLensResult), result)
        assert store.count_results() == 2


def test_new_file_has_the_same_layout_as_a_migrated_one(tmp_path, lens_result):
    request, result = lens_result
    write_v1_file(tmp_path / "old.duckdb", result, request, np.zeros((1, 1, 4), np.float32))
    Store(tmp_path / "old.duckdb").close()
    Store(tmp_path / "new.duckdb").close()
    for table in ("store_meta", "results", "result_arrays", "activation_sets", "model_names"):
        assert columns(tmp_path / "old.duckdb", table) == columns(tmp_path / "new.duckdb", table)


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path, lens_result, monkeypatch):
    request, result = lens_result
    path = tmp_path / "v1.duckdb"
    write_v1_file(path, result, request, np.ones((2, 2, 8), np.float32))
    v1_columns = columns(path, "results")

    def half_done(cur):
        schema._migrate_1_to_2(cur)
        raise duckdb.Error("disk full (simulated) halfway through the migration")

    monkeypatch.setitem(schema.MIGRATIONS, 1, half_done)
    with pytest.raises(CacheError, match=REBUILD):
        Store(path)
    assert stored_version(path) == "1" and columns(path, "results") == v1_columns

    monkeypatch.undo()  # the real migration then succeeds on the untouched file
    with Store(path) as store:
        key = ResultKey("logit_lens", 1, "model-digest", request_digest(request))
        assert codec.same_result(store.get_result(key, LogitLensResult), result)


def _set_version(path, version: str) -> None:
    con = duckdb.connect(str(path))
    con.execute("UPDATE store_meta SET value = ? WHERE name = 'schema_version'", [version])
    con.close()


def test_newer_schema_is_refused_with_the_rebuild_command_and_kept(tmp_path):
    path = tmp_path / "workbench.duckdb"
    with Store(path) as store:
        store.put_activations(ActivationKey("m", "i", "resid"), np.ones((1, 2, 4), np.float32))
    _set_version(path, str(SCHEMA_VERSION + 1))
    with pytest.raises(CacheError, match=rf"schema version {SCHEMA_VERSION + 1}, newer.*{REBUILD}"):
        Store(path)
    assert stored_version(path) == str(SCHEMA_VERSION + 1)  # refused, not touched

    with Store(path, rebuild=True) as store:  # the explicit rebuild: moved aside, new file empty
        backup = store.backup_path
        assert backup.name.startswith("workbench.duckdb.bak-") and backup.parent == tmp_path
        assert store.get_activations(ActivationKey("m", "i", "resid")) is None
    assert stored_version(backup) == str(SCHEMA_VERSION + 1)  # the old data is all there
    assert stored_version(path) == str(SCHEMA_VERSION)


def test_unknown_version_or_foreign_file_names_the_rebuild_command(tmp_path):
    path = tmp_path / "zero.duckdb"
    Store(path).close()
    _set_version(path, "0")
    with pytest.raises(CacheError, match=f"schema version 0.*no migration.*{REBUILD}"):
        Store(path)

    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE something_else (x INTEGER)")
    con.close()
    with pytest.raises(CacheError, match=f"no schema version.*{REBUILD}"):
        Store(foreign)


def test_rebuild_takes_the_write_ahead_log_along(tmp_path):
    """A WAL left next to the file would be replayed into the new empty cache: it moves with the file."""
    path = tmp_path / "workbench.duckdb"
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    con.execute("INSERT INTO store_meta VALUES ('only_in_the_wal', 'x')")
    con.close()
    assert path.with_name("workbench.duckdb.wal").exists()
    with Store(path, rebuild=True) as store:
        backup = store.backup_path
    for file in (path, backup):
        con = duckdb.connect(str(file), read_only=True)
        names = {row[0] for row in con.execute("SELECT name FROM store_meta").fetchall()}
        con.close()
        assert ("only_in_the_wal" in names) == (file == backup)


def test_rebuild_refuses_a_file_in_use(tmp_path):
    path = tmp_path / "workbench.duckdb"
    with Store(path), pytest.raises(CacheLocked, match="open in this process"):
        Store(path, rebuild=True)

    hold = f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('ready', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(CacheLocked, match="second workbench server"):
            Store(path, rebuild=True)
    finally:
        holder.kill()
        holder.wait()
    assert path.exists() and list(tmp_path.glob("*.bak-*")) == []


def test_a_damaged_file_is_refused_then_rebuilt_with_its_bytes_kept(tmp_path):
    path = tmp_path / "workbench.duckdb"
    garbage = b"not a duckdb file at all" * 500
    path.write_bytes(garbage)
    with pytest.raises(CacheError, match=REBUILD):
        Store(path)
    with Store(path, rebuild=True) as store:
        assert store.count_results() == 0
        assert store.backup_path.read_bytes() == garbage
