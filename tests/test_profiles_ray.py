"""A profile that names a Ray custom resource is measured on the node that offers it: a real two-node
Ray cluster on this machine (head + a worker offering hw-mobile-cpu)."""
import pytest

from autocompress.hardware import describe, load_profile, obtain_latency, route
from autocompress.hardware.obtain import RAY

from test_hardware import tiny_bert_like


@pytest.fixture(autouse=True)
def private_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_LOCK_FILE", str(tmp_path / "machine.lock"))


def test_measurement_runs_on_the_node_offering_the_resource(ray_cluster, tmp_path):
    import ray

    address = ray_cluster(worker_resources={"hw-mobile-cpu": 1})
    model = tiny_bert_like(tmp_path / "m.onnx", hidden=64, layers=2)
    profile = load_profile("mobile-cpu")
    assert route(profile).kind != RAY                   # not connected: predicted here
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
        worker = [i for i, n in nodes.items() if n["Resources"].get("hw-mobile-cpu")]
        head = ray.get_runtime_context().get_node_id()
        assert len(nodes) == 2 and len(worker) == 1 and worker[0] != head
        assert route(profile).kind == RAY
        lat = obtain_latency(model, profile, max_seconds=1.0)
    finally:
        ray.shutdown()
    assert lat.how == "measured" and lat.median_ms > 0 and lat.n >= 10
    assert lat.detail["ray_node_id"] == worker[0]       # it ran on the worker, not on the head
    assert lat.detail["ray_resource"] == "hw-mobile-cpu"
    assert lat.detail["threads"] == min(profile.max_threads, __import__("os").cpu_count())
    text = describe(lat.to_dict())
    assert text.startswith("measured on") and f"Ray node {worker[0][:12]} offering hw-mobile-cpu" in text
