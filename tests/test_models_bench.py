"""bench/bench_model.py stays runnable: one tiny case in-process (the timed numbers live in the bench, not here)."""

import importlib.util
from pathlib import Path


def load_bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_model.py"
    spec = importlib.util.spec_from_file_location("bench_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_case_reports_time_memory_and_path():
    bench = load_bench()
    for dense in (False, True):
        r = bench.bench_case("convmae_tiny_pretrain", (1, 3, 32, 32), steps=2, warmup=0, dense=dense)
        assert r["sparse_stages"] is (not dense)
        assert 0 < r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
        if r["peak_rss_mib"] is not None:  # Linux: VmHWM after a reset is at least the RSS at the reset
            assert r["peak_rss_mib"] >= 0.5 * r["rss_before_mib"]
