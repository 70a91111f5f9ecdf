"""The precision benchmark's raw-arithmetic line (benchmarks.precision matmul): fp32 and bf16 timed in turn,
their throughput and ratio reported."""
import pytest

from benchmarks import precision

pytestmark = pytest.mark.bench  # run by .ci/run after README's command (pyproject.toml)


def test_matmul_times_fp32_and_bf16_in_turn_and_reports_their_ratio(capsys):
    out = precision.main(["matmul", "--size", "32", "--cycles", "2"])
    assert set(out["gflops"]) == {"fp32", "bf16"} and all(g > 0 for g in out["gflops"].values())
    assert out["bf16_vs_fp32"] > 0 and out["cycles"] == 2 and set(out["cpu_bf16"]) == {"avx512_bf16", "amx_bf16"}
    printed = capsys.readouterr().out
    assert "32x32 matmul" in printed and f"{out['bf16_vs_fp32']:.2f}x" in printed
