"""ferry's Python package against a real ferry-server: ferry.torch publish and pull_into across
processes, mismatches, failures and fallback, tensor layouts, the error hierarchy, the GIL, and
interop with the C++ command (both directions) and compile-cache artifacts.

Needs FERRY_PYTHON_PACKAGE (the build tree's python/ folder, set by ctest).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

if not os.environ.get("FERRY_PYTHON_PACKAGE"):
    raise pytest.UsageError("FERRY_PYTHON_PACKAGE is not set; run these tests through ctest")
sys.path.insert(0, os.environ["FERRY_PYTHON_PACKAGE"])
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
import ferry  # noqa: E402
import ferry.torch  # noqa: E402
import tiny_transformer  # noqa: E402
from conftest import ServingChild, binary, wait_ready_file  # noqa: E402

IDENTITY = {"model_name": "tiny-transformer", "dtype": "float32"}


class TorchSource:
    """tests/python/torch_peer.py in its own process."""

    def __init__(self, workdir, server, name="source", extra=(), model="tiny-transformer"):
        self.ready_file = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.environ["FERRY_PYTHON_PACKAGE"], os.path.dirname(__file__)])
        env["FERRY_LOG_LEVEL"] = "warn"
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "torch_peer.py"),
             "--server", server.address, "--model", model, "--ready-file",
             str(self.ready_file), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.ready = wait_ready_file(self.ready_file, self.proc, name, self.log_path, 60)
        base = str(self.ready_file)[:-len(".json")]
        self.checkpoint = base + ".checkpoint.pt"
        self.output = torch.load(base + ".output.pt")

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._log.close()
        assert code == 0, self.log()

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def ready_workers(server, model="tiny-transformer"):
    client = ferry.MetadataClient(server.address)
    return client.list_sources({"model_name": model, "dtype": "float32"})


def run(model):
    with torch.no_grad():
        return model(tiny_transformer.sample_input())


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), f"{name} was modified"


# --- the transformer across two processes ---------------------------------------------------


def test_transformer_published_by_one_process_pulled_into_another(server, tmp_path):
    source = TorchSource(tmp_path, server)
    try:
        # One registered region per storage: the tied embedding/head weight counts once.
        assert source.ready["regions"] == source.ready["storages"]
        assert source.ready["regions"] == source.ready["tensors"] - 1
        assert source.ready["mx_source_id"] == ferry.mx_source_id(IDENTITY)

        target = tiny_transformer.build(seed=2)  # freshly initialized, other weights
        assert not torch.equal(run(target), source.output)
        report = ferry.torch.pull_into(target, IDENTITY, server=server.address)
        assert report.ok and bool(report) and report.outcome == "pulled", report.message
        assert report.tensors == source.ready["tensors"]
        # The tied weight is read once: bytes moved are the source's distinct bytes.
        tied = target.embed.weight.numel() * 4
        assert report.bytes == source.ready["bytes"] - tied
        assert report.source_worker_id == source.ready["worker_id"]
        assert report.mx_source_id == source.ready["mx_source_id"]
        assert target.head.weight.data_ptr() == target.embed.weight.data_ptr()  # still tied
        assert torch.equal(run(target), source.output)
        assert torch.equal(target.position_scale, torch.load(source.checkpoint)["position_scale"])
    finally:
        source.stop()
    assert ready_workers(server) == []  # STALE after stop()


def test_interpreter_exit_marks_the_source_stale(server, tmp_path):
    source = TorchSource(tmp_path, server, extra=["--exit-after-ready"])
    assert source.proc.wait(timeout=30) == 0, source.log()
    assert ready_workers(server) == []


def test_mismatched_model_is_refused_naming_the_tensor(server, tmp_path):
    source = TorchSource(tmp_path, server)
    try:
        target = tiny_transformer.build(seed=3, ff_overrides={1: 96})  # layer 1's MLP differs
        before = snapshot(target)
        with pytest.raises(ferry.FailedPreconditionError) as info:
            ferry.torch.pull_into(target, IDENTITY, server=server.address)
        message = str(info.value)
        assert "layers.1.linear1.weight" in message, message
        assert "[96, 64] in the model but [128, 64] at the source" in message, message
        assert "nothing was pulled" in message
        assert info.value.code == "FAILED_PRECONDITION"
        assert isinstance(info.value, ferry.Error)
        assert_unchanged(target, before)

        # A model with a tensor the source lacks is refused too, naming it.
        extra = dict(tiny_transformer.build(seed=2).state_dict())
        extra["lora.weight"] = torch.zeros(4, 4)
        with pytest.raises(ferry.FailedPreconditionError, match="not at the source: lora.weight"):
            ferry.torch.pull_into(extra, IDENTITY, server=server.address)
        # And a dtype change.
        halved = tiny_transformer.build(seed=2).state_dict()
        halved["norm.weight"] = halved["norm.weight"].double()
        with pytest.raises(ferry.FailedPreconditionError,
                           match="tensor norm.weight: dtype F64 in the model but F32"):
            ferry.torch.pull_into(halved, IDENTITY, server=server.address)
    finally:
        source.stop()


def test_source_killed_mid_pull_leaves_the_target_able_to_fall_back(server, tmp_path):
    # A larger model, served at 4 MiB/s by the source's real upload cap (TCP only), so that the
    # pull (about 12 MiB, some 3 s) is still running when the source dies.
    source = TorchSource(tmp_path, server, extra=["--dim", "256", "--layers", "4", "--ff", "1024",
                                                  "--max-upload-rate", str(4 << 20)])
    target = tiny_transformer.build(seed=2, dim=256, layers=4, ff=1024)
    result = {}

    def pull():
        result["report"] = ferry.torch.pull_into(
            target, IDENTITY, server=server.address, stall_timeout=3.0, max_sources=2)

    before = snapshot(target)

    def landed():  # some of the source's bytes are in the target's tensors
        return any(not torch.equal(t, before[n]) for n, t in target.state_dict().items())

    thread = threading.Thread(target=pull)
    thread.start()
    deadline = time.monotonic() + 30
    while not landed() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the condition above, not waiting for time to pass
    assert thread.is_alive(), "the capped pull ended before the test could kill its source"
    source.kill()
    thread.join(timeout=60)
    assert not thread.is_alive(), "pull_into did not return after its source died"
    report = result["report"]
    assert not report.ok and report.outcome == "failed", report
    assert report.modified  # tensors may hold partial data: the caller must load them
    assert source.ready["worker_id"] in report.message, report.message
    assert "load them another way" in report.message

    # The fallback: the engine's normal loader.
    target.load_state_dict(torch.load(source.checkpoint))
    assert torch.equal(run(target), source.output)


def test_no_source_returns_quickly_for_a_fallback(server):
    target = tiny_transformer.build(seed=2)
    before = snapshot(target)
    start = time.monotonic()
    report = ferry.torch.pull_into(target, {"model_name": "nobody-publishes-this"},
                                   server=server.address)
    elapsed = time.monotonic() - start
    assert not report.ok and report.outcome == "no_source"
    assert "no READY source for model nobody-publishes-this" in report.message
    assert not report.modified
    assert elapsed < 10, elapsed
    assert_unchanged(target, before)


# --- tensor layouts -------------------------------------------------------------------------


def test_views_noncontiguous_and_shared_storage(server):
    base = torch.arange(1000, dtype=torch.float32)
    matrix = torch.arange(600, dtype=torch.int64).reshape(20, 30)
    tensors = {
        "a": base[:100],                       # views into one storage
        "b": base[100:300].view(10, 20),
        "b_alias": base[100:300].view(10, 20),  # the same range under another name
        "t": matrix.t(),                        # non-contiguous: published from a copy
        "scalar": torch.tensor(7, dtype=torch.int16),
        "empty": torch.zeros(0, 3),
        "bf16": torch.linspace(-1, 1, 64).to(torch.bfloat16),
    }
    with ferry.torch.publish(tensors, {"model_name": "layouts"}, server=server.address) as h:
        assert h.copied == ["t"]
        # base, the copy of t, scalar and bf16: four allocations, seven tensors.
        assert h.regions == 4 and h.tensors == 7

        big = torch.full((400,), -1.0)
        into = {
            "a": big[:100],
            "b": big[200:400].view(10, 20),
            "b_alias": big[200:400].view(10, 20),
            "t": torch.zeros(20, 30, dtype=torch.int64).t(),  # non-contiguous destination
            "scalar": torch.tensor(0, dtype=torch.int16),
            "empty": torch.zeros(0, 3),
            "bf16": torch.zeros(64, dtype=torch.bfloat16),
        }
        report = ferry.torch.pull_into(into, {"model_name": "layouts"}, server=server.address)
        assert report.ok, report.message
        for name in tensors:
            assert torch.equal(into[name], tensors[name]), name
        assert torch.equal(big[100:200], torch.full((100,), -1.0))  # the gap is untouched

        overlapping = dict(into)
        overlapping["b_alias"] = big[150:350].view(10, 20)
        with pytest.raises(ferry.InvalidArgumentError, match="overlap in memory") as info:
            ferry.torch.pull_into(overlapping, {"model_name": "layouts"}, server=server.address)
        assert isinstance(info.value, ValueError)


def test_striped_pull_from_two_python_sources_one_capped(server):
    """pull_into(stripe=2) reads one model from two in-place sources at once (one capped with
    max_upload_rate, which serves over TCP only), and reports what each delivered."""
    # 32 MiB: 16 of the striped pull's 2 MiB pieces to share between the two sources.
    weights = {f"layer.{i}": torch.arange(i, i + (1 << 20), dtype=torch.float32) for i in range(8)}
    identity = {"model_name": "striped"}
    with ferry.torch.publish(weights, identity, server=server.address) as a, \
            ferry.torch.publish(weights, identity, server=server.address,
                                max_upload_rate=64 << 20) as b:
        into = {name: torch.zeros_like(t) for name, t in weights.items()}
        report = ferry.torch.pull_into(into, identity, server=server.address, transport="tcp",
                                       stripe=2)
        assert report.ok, report.message
        for name, t in weights.items():
            assert torch.equal(into[name], t), name
        assert len(report.attempts) == 2
        assert {x["worker_id"] for x in report.attempts} == {a.worker_id, b.worker_id}
        assert sum(x["bytes"] for x in report.attempts) == report.bytes
        assert all(x["error"] is None for x in report.attempts)
    with pytest.raises(ferry.InvalidArgumentError, match="max_upload_rate"):
        ferry.torch.publish(weights, identity, server=server.address, transports=["shm", "tcp"],
                            max_upload_rate=1 << 20)


def test_dtype_mapping_comes_from_the_module_table():
    table = {name: (torch_name, size) for name, torch_name, size in ferry._ferry.dtypes()}
    assert table["C64"] == ("torch.complex64", 8) and table["F8_E8M0"][1] == 1
    mapping = ferry.torch._DTYPE_NAMES
    # Every row this torch has a dtype for, and nothing else, under the table's name and size.
    expected = {name for name, (torch_name, _) in table.items()
                if isinstance(getattr(torch, torch_name[len("torch."):], None), torch.dtype)}
    assert set(mapping.values()) == expected
    for dtype, name in mapping.items():
        assert str(dtype) == table[name][0]
        assert torch.empty(0, dtype=dtype).element_size() == table[name][1]
    assert mapping[torch.complex64] == "C64"


def test_every_dtype_of_this_torch_published_and_pulled_back(server):
    """complex64 and every other dtype both this torch and ferry's table know, end to end."""
    tensors = {}
    for dtype, name in ferry.torch._DTYPE_NAMES.items():
        size = torch.empty(0, dtype=dtype).element_size()
        raw = (torch.arange(6 * size, dtype=torch.int64) * 7 + 3).to(torch.uint8)
        tensors[f"t.{name}"] = raw.view(dtype).reshape(2, 3)
    tensors["c64"] = torch.tensor([1 + 2j, -3.5 + 0.25j, 0j], dtype=torch.complex64)
    identity = {"model_name": "every-dtype"}
    with ferry.torch.publish(tensors, identity, server=server.address) as h:
        assert h.tensors == len(tensors)
        into = {k: torch.zeros_like(v) for k, v in tensors.items()}
        report = ferry.torch.pull_into(into, identity, server=server.address)
        assert report.ok, report.message
        for name, t in tensors.items():
            assert into[name].dtype == t.dtype
            assert into[name].view(torch.uint8).equal(t.view(torch.uint8)), name
        assert torch.equal(into["c64"], tensors["c64"])


def test_every_dtype_of_the_table_through_the_cli(server, tmp_path):
    """A safetensors file with one tensor of each dtype in ferry's table (F8_E8M0 and C64
    included, which no torch 1.x has) is published and pulled back byte for byte."""
    path = tmp_path / "all.safetensors"
    header, offset, blobs = {}, 0, []
    for name, _, size in ferry._ferry.dtypes():
        raw = bytes((offset + i) * 31 % 251 for i in range(5 * size))
        header[f"t.{name}"] = {"dtype": name, "shape": [5],
                               "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    source = ServingChild(["--server", server.address, "publish", str(path), "--model",
                           "every-dtype-file"], tmp_path, "all-dtypes")
    try:
        out = tmp_path / "pulled.safetensors"
        proc = subprocess.run(
            [binary("FERRY_CLI_BIN"), "--server", server.address, "pull", "--model",
             "every-dtype-file", "-o", str(out)],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        got_header, data = read_safetensors(out)
        assert data == b"".join(blobs)
        for name, entry in header.items():
            assert got_header[name]["dtype"] == entry["dtype"], name
    finally:
        source.stop()


def test_unsupported_tensors_are_refused_naming_them(server):
    cases = [
        ({"z": torch.zeros(3, dtype=torch.complex128)}, "tensor z has dtype torch.complex128"),
        ({"m": torch.empty(3, device="meta")}, "tensor m is on the meta device"),
        ({"s": torch.zeros(3, 3).to_sparse()}, "tensor s has layout torch.sparse_coo"),
        ({"n": 3}, "'n' is a int, not a torch.Tensor"),
    ]
    for tensors, message in cases:
        with pytest.raises(ferry.InvalidArgumentError) as info:
            ferry.torch.publish(tensors, {"model_name": "bad"}, server=server.address)
        assert message in str(info.value)
        with pytest.raises(ferry.InvalidArgumentError) as info:
            ferry.torch.pull_into(tensors, {"model_name": "bad"}, server=server.address)
        assert message in str(info.value)
    with pytest.raises(ferry.InvalidArgumentError, match="nothing to move"):
        ferry.torch.publish({}, {"model_name": "bad"}, server=server.address)


def test_device_spans_without_a_driver_fail_naming_the_driver(server):
    """Spans of device memory need the CUDA driver: on this driverless machine the binding
    refuses them with the driver's reason (CPU torch cannot make a CUDA tensor, so the span is
    described directly), and a span list of the wrong length is refused."""
    t = torch.arange(1024, dtype=torch.float32)
    buffers = [("w", "F32", [1024], t.data_ptr(), 4096)]
    spans = [(t.data_ptr(), 4096)]
    client = ferry.MetadataClient(server.address)
    engine = ferry._ferry.TransferEngine("device span test", transports=["tcp"],
                                         tcp_listen="127.0.0.1:0")
    try:
        with pytest.raises(ferry.FailedPreconditionError) as info:
            ferry._ferry.serve_buffers(client, engine, {"model_name": "gpu"}, buffers, spans,
                                       span_devices=[0])
        assert "could not be loaded" in str(info.value) or "built without CUDA" in str(info.value)
        with pytest.raises(ferry.InvalidArgumentError, match="span_devices has 2 entries for 1"):
            ferry._ferry.serve_buffers(client, engine, {"model_name": "gpu"}, buffers, spans,
                                       span_devices=[-1, -1])
    finally:
        engine.stop()
    # Host tensors describe themselves as host spans.
    assert ferry.torch._describe({"w": t})[2] == [-1]


def test_a_nixl_agent_is_named_by_both_its_name_and_its_listener(server):
    """serve_buffers names a NIXL agent serving the same memory (publish(backend="ferry+nixl"))
    by its name and its listener together: one without the other is refused before anything
    is published."""
    t = torch.arange(1024, dtype=torch.float32)
    buffers = [("w", "F32", [1024], t.data_ptr(), 4096)]
    spans = [(t.data_ptr(), 4096)]
    client = ferry.MetadataClient(server.address)
    engine = ferry._ferry.TransferEngine("nixl fields test", transports=["tcp"],
                                         tcp_listen="127.0.0.1:0")
    try:
        for name, endpoint in (("agent", ""), ("", "127.0.0.1:5555")):
            with pytest.raises(ferry.InvalidArgumentError,
                               match="nixl_agent_name and nixl_metadata_endpoint go together"):
                ferry._ferry.serve_buffers(client, engine, {"model_name": "nixl-fields"}, buffers,
                                           spans, nixl_agent_name=name,
                                           nixl_metadata_endpoint=endpoint)
        assert client.list_sources({"model_name": "nixl-fields"}) == []
    finally:
        engine.stop()


# --- the binding itself ---------------------------------------------------------------------


def test_errors_identity_and_client(server):
    assert issubclass(ferry.NotFoundError, ferry.Error)
    assert issubclass(ferry.InvalidArgumentError, ValueError)
    assert issubclass(ferry.DeadlineExceededError, TimeoutError)
    with pytest.raises(ferry.InvalidArgumentError, match="unknown identity field 'colour'"):
        ferry.mx_source_id({"model_name": "m", "colour": "red"})
    with pytest.raises(ferry.InvalidArgumentError, match="model_name is required"):
        ferry.mx_source_id({"dtype": "float32"})
    with pytest.raises(ferry.InvalidArgumentError, match="unknown framework 'jax'"):
        ferry.mx_source_id({"model_name": "m", "framework": "jax"})
    # The dataclass, the dict and the CLI's short names hash alike; defaults match the CLI's.
    ident = ferry.SourceIdentity("org/m", backend_framework="vllm", tensor_parallel_size=2,
                                 extra_parameters={"k": "v"})
    assert ident.mx_source_id == ferry.mx_source_id(
        {"model": "org/m", "framework": "vllm", "tp": 2, "extra": {"k": "v"}})

    client = ferry.MetadataClient(server.address)
    assert client.health()["status"] == "ok"
    with pytest.raises(ferry.NotFoundError) as info:
        client.get_metadata("0123456789abcdef", "nobody")
    assert info.value.code == "NOT_FOUND" and info.value.message == str(info.value)

    dead = ferry.MetadataClient("127.0.0.1:1", call_timeout=2.0, connect_timeout=1.0)
    with pytest.raises(ferry.UnavailableError) as info:
        dead.list_sources({"model_name": "m"})
    assert "127.0.0.1:1" in str(info.value)
    # pull_into turns an unreachable server into a failed report the caller can fall back on.
    report = ferry.torch.pull_into({"x": torch.zeros(2)}, {"model_name": "m"}, client=dead)
    assert report.outcome == "failed" and "127.0.0.1:1" in report.message


def test_byte_size_grammar_is_the_one_the_benchmarks_mirror():
    """bench/harness.py parses --size with the standard library only; it must accept what the
    C++ grammar accepts, with the same value, and refuse what it refuses."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import argparse
    import harness
    good = ["1", "4096", "4096B", "4096 b", "4KiB", "512k", "512K", "64MiB", "64mib", "64m", "1G",
            "1GiB", " 1.5GiB ", "0.5KiB", "2.25k", "1.0", "007", "2TiB", "1.5T", "0.25MiB",
            "18446744073709551615"]
    bad = ["", "lots", "-1", "0", "0KiB", "0.0", "0.1KiB", "1.5", "1e30", "1PiB", "1GB", "1kb",
           "1.", ".5G", "1.2.3", "18446744073709551616", "16777216T", "1 MiB extra"]
    for text in good:
        assert harness.parse_size(text) == ferry._ferry.parse_byte_size(text), text
    for text in bad:
        with pytest.raises(ferry.InvalidArgumentError, match="is not a byte size") as info:
            ferry._ferry.parse_byte_size(text, "--size")
        assert f"--size='{text}'" in str(info.value)
        with pytest.raises(argparse.ArgumentTypeError):
            harness.parse_size(text)


def test_blocking_calls_release_the_gil(server):
    tensors = {"w": torch.arange(1 << 20, dtype=torch.float32)}  # 4 MiB
    # Served at 4 MiB/s by the source's real upload cap (TCP only): the pull takes about 1 s.
    with ferry.torch.publish(tensors, {"model_name": "gil"}, server=server.address,
                             max_upload_rate=4 << 20):
        into = {"w": torch.zeros(1 << 20)}
        done = threading.Event()
        result = {}

        def pull():
            result["report"] = ferry.torch.pull_into(
                into, {"model_name": "gil"}, server=server.address)
            done.set()

        thread = threading.Thread(target=pull)
        thread.start()
        ticks = 0
        while not done.is_set():
            ticks += 1  # pure Python work, possible only while the pull has released the GIL
            time.sleep(0.001)
        thread.join()
        assert result["report"].ok, result["report"].message
        assert result["report"].seconds > 0.5  # 4 MiB at 4 MiB/s
        assert ticks > 100, ticks
        assert torch.equal(into["w"], tensors["w"])


# --- interop with the C++ command -----------------------------------------------------------


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def test_python_source_pulled_by_the_cli(server, tmp_path):
    model = tiny_transformer.build(seed=5)
    with ferry.torch.publish(model, IDENTITY, server=server.address):
        out = tmp_path / "pulled.safetensors"
        proc = subprocess.run(
            [binary("FERRY_CLI_BIN"), "--server", server.address, "pull", "--model",
             "tiny-transformer", "--dtype", "float32", "-o", str(out), "--json"],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        header, data = read_safetensors(out)
    state = model.state_dict()
    names = [k for k in header if k != "__metadata__"]
    assert sorted(names) == sorted(state)
    for name in names:
        begin, end = header[name]["data_offsets"]
        got = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.float32)
        assert torch.equal(got.reshape(state[name].shape), state[name]), name


def test_cli_source_pulled_into_torch_tensors(server, tmp_path):
    state = tiny_transformer.build(seed=6).state_dict()
    del state["head.weight"]  # safetensors files hold a tied weight once
    path = tmp_path / "model.safetensors"
    header, offset, blobs = {}, 0, []
    for name, t in state.items():
        raw = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    source = ServingChild(["--server", server.address, "publish", str(path), "--model",
                           "tiny-transformer", "--dtype", "float32"], tmp_path, "cli-source")
    try:
        target = tiny_transformer.build(seed=7).state_dict()
        del target["head.weight"]
        report = ferry.torch.pull_into(target, IDENTITY, server=server.address)
        assert report.ok, report.message
        assert report.transport in ("shm", "ucx", "tcp")
        for name in state:
            assert torch.equal(target[name], state[name]), name
    finally:
        source.stop()


# --- compile-cache artifacts ----------------------------------------------------------------


def test_artifact_publish_and_pull(server, tmp_path):
    keys = tmp_path / "keys"
    subprocess.run([binary("FERRY_CLI_BIN"), "artifact", "keygen", str(keys)], check=True,
                   capture_output=True)
    cache = tmp_path / "cache"
    (cache / "ab" / "cd").mkdir(parents=True)
    (cache / "ab" / "cd" / "kernel.so").write_bytes(os.urandom(300_000))
    (cache / "index.json").write_text('{"k": 1}')
    identity = ferry.SourceIdentity("tiny-transformer", gpu_arch="sm90")
    into = tmp_path / "into"
    state_dir = tmp_path / "state"
    with pytest.raises(ferry.NotFoundError, match="no READY"):
        ferry.artifacts.pull("triton", identity, into, trust=[keys / "signing.pub"],
                             server=server.address, state_dir=str(state_dir))
    with ferry.artifacts.publish(cache, "triton", identity, server=server.address,
                                 signing_key=keys / "signing.key") as handle:
        assert handle.signed and handle.file_count == 2
        result = ferry.pull_artifact("triton", identity, into, trust=[keys / "signing.pub"],
                                     server=server.address, state_dir=str(state_dir))
        assert result["installed"] and result["trust"] == "trusted"
        assert result["artifact_id"] == handle.artifact_id
        assert (into / "ab" / "cd" / "kernel.so").read_bytes() == \
            (cache / "ab" / "cd" / "kernel.so").read_bytes()
        assert (into / "index.json").read_text() == '{"k": 1}'
        with pytest.raises(ferry.InvalidArgumentError, match="unknown cache kind 'tritonn'"):
            ferry.artifacts.pull("tritonn", identity, into, server=server.address)


# --- the low-level pieces: engine regions, peers, the publisher -----------------------------


def test_engine_regions_and_one_sided_reads():
    source = ferry.TransferEngine("py source", transports=["tcp"], tcp_listen="127.0.0.1:0")
    target = ferry.TransferEngine("py target", transports=["tcp"], tcp_listen="127.0.0.1:0")
    try:
        region = source.allocate_region(1 << 20)
        view = memoryview(region)
        assert view.nbytes == region.size == 1 << 20
        payload = os.urandom(1 << 20)
        view[:] = payload
        dst = torch.zeros(1 << 20, dtype=torch.uint8)
        peer = target.connect(source.export_blob(), "tcp")
        assert peer.transport == "tcp" and "py source" in peer.description
        half = 1 << 19
        peer.read([(region.id, half, dst.data_ptr(), half),
                   (region.id, 0, dst.data_ptr() + half, half)], timeout=10)
        assert bytes(dst.numpy()) == payload[half:] + payload[:half]
        with pytest.raises(ferry.InvalidArgumentError):
            peer.read([(region.id, 1 << 20, dst.data_ptr(), 1)])  # past the region's end
        region.release()
        with pytest.raises(ferry.FailedPreconditionError, match="released"):
            region.size
        with pytest.raises(ferry.InvalidArgumentError, match="tcpp"):
            target.connect(source.export_blob(), "tcpp")
    finally:
        source.stop()
        target.stop()


def test_publisher_heartbeats_and_marks_stale(server):
    client = ferry.MetadataClient(server.address)
    identity = ferry.SourceIdentity("publisher-test", dtype="float32")
    publisher = ferry.Publisher(client, identity.to_dict(), worker_rank=3,
                                worker_grpc_endpoint="127.0.0.1:9", accelerator="cpu",
                                heartbeat_interval=0.1, topology={"rack": "r3", "block": "b1"})
    publisher.start()
    try:
        refs = client.list_sources(identity.to_dict())
        assert [(r["worker_id"], r["worker_rank"], r["accelerator"]) for r in refs] == \
            [(publisher.worker_id, 3, "cpu")]
        # ModelExpress 0.7.0's fields: the topology as published, and the load every READY
        # carries (0: the publisher measures no busyness).
        assert refs[0]["topology"] == {"rack": "r3", "block": "b1"}
        assert refs[0]["source_load"] == 0.0
        assert publisher.mx_source_id == identity.mx_source_id
        record = client.get_metadata(publisher.mx_source_id, publisher.worker_id)
        assert record["status"] == "SOURCE_STATUS_READY"
        assert record["worker_grpc_endpoint"] == "127.0.0.1:9"
        deadline = time.monotonic() + 10
        while publisher.heartbeat_count < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        publisher.stop()
    assert client.list_sources(identity.to_dict()) == []
    record = client.get_metadata(publisher.mx_source_id, publisher.worker_id)
    assert record["status"] == "SOURCE_STATUS_STALE"


def test_errors_raised_by_the_python_layer_carry_code_and_message():
    with pytest.raises(ferry.InvalidArgumentError) as info:
        ferry.torch.pull_into({"x": torch.zeros(2)}, 3)
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.message == str(info.value)
    assert "identity must be a ferry.SourceIdentity" in info.value.message


def make_certs(d):
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl command)."""
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=ferry test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return {n: str(d / n) for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                    "client.key")}


def test_worker_endpoint_over_mutual_tls(server, tmp_path):
    certs = make_certs(tmp_path)
    tensors = {"w": torch.arange(4096, dtype=torch.float32)}
    identity = {"model_name": "tls-model"}
    with ferry.torch.publish(tensors, identity, server=server.address,
                             advertise_host="127.0.0.1", tls_cert=certs["server.pem"],
                             tls_key=certs["server.key"], tls_client_ca=certs["ca.pem"]):
        into = {"w": torch.zeros(4096)}
        # Plaintext, and TLS without a client certificate, are refused; nothing is written.
        for kwargs in ({}, {"worker_tls_ca": certs["ca.pem"]}):
            report = ferry.torch.pull_into(into, identity, server=server.address,
                                           max_sources=1, **kwargs)
            assert report.outcome == "failed", (kwargs, report)
            assert torch.equal(into["w"], torch.zeros(4096))
        report = ferry.torch.pull_into(
            into, identity, server=server.address, worker_tls_ca=certs["ca.pem"],
            worker_tls_client_cert=certs["client.pem"], worker_tls_client_key=certs["client.key"])
        assert report.ok, report.message
        assert torch.equal(into["w"], tensors["w"])


# --- refused credentials raise ---------------------------------------------------------------

ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"


# Regression: when every source refused the target's token, the pull failed with UNAVAILABLE
# and pull_into returned a "failed" report, although its docstring promises that refused
# credentials raise.
def test_pull_with_a_refused_token_raises(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ALICE_TOKEN} alice\n{BOB_TOKEN} bob\n")
    server = start_server("--auth-tokens", str(tokens))
    alice = ferry.MetadataClient(server.address, token=ALICE_TOKEN)
    identity = {"model_name": "auth-model"}
    tensors = {"w": torch.arange(4096, dtype=torch.float32)}
    # Two sources serving with alice's token: their worker endpoints accept only that one.
    with ferry.torch.publish(tensors, identity, client=alice, advertise_host="127.0.0.1"), \
            ferry.torch.publish(tensors, identity, client=alice, advertise_host="127.0.0.1"):
        into = {"w": torch.zeros(4096)}
        # Bob's token passes the server, and every source refuses it.
        bob = ferry.MetadataClient(server.address, token=BOB_TOKEN)
        assert len(bob.list_sources(identity)) == 2
        with pytest.raises(ferry.UnauthenticatedError) as info:
            ferry.torch.pull_into(into, identity, client=bob)
        assert info.value.code == "UNAUTHENTICATED"
        assert "2 of 2 READY source(s) tried, all failed" in info.value.message, info.value
        assert torch.equal(into["w"], torch.zeros(4096))
        # A token the server does not know fails at the server, before any source.
        stranger = ferry.MetadataClient(server.address, token="stranger-token-0123456789")
        with pytest.raises(ferry.UnauthenticatedError, match="ListSources to"):
            ferry.torch.pull_into(into, identity, client=stranger)
        assert torch.equal(into["w"], torch.zeros(4096))
        # The right token pulls.
        report = ferry.torch.pull_into(into, identity, client=alice)
        assert report.ok, report.message
        assert torch.equal(into["w"], tensors["w"])


def test_candidate_lookups_run_at_once_in_order_and_raise_the_first_error():
    """pull_into(backend="auto") fetches every candidate's record and asks each P2P endpoint
    whether it serves ferry: those round trips run together (ferry.torch._each), not one after
    another. Eight calls pass a barrier of eight only if all are in flight at once."""
    n = 8
    barrier = threading.Barrier(n, timeout=30)

    def lookup(i):
        barrier.wait()  # BrokenBarrierError (the test fails) unless all eight run together
        return i * i

    assert ferry.torch._each(lookup, list(range(n))) == [i * i for i in range(n)]
    assert ferry.torch._each(lookup, []) == []

    def failing(i):
        if i in (3, 5):
            raise ferry.NotFoundError(f"record {i}")
        return i

    with pytest.raises(ferry.NotFoundError, match="record 3"):
        ferry.torch._each(failing, list(range(n)))
