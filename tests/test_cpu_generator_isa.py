"""The CPU generator has an AVX2 path (hand-written Philox rounds) and a portable one; the
extension is built with whichever the machine supports, so the other would go untested. Compile
the header both ways in a tiny program and check both against the torch reference."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import corp_kernels as ck
from conftest import assert_normals_close

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include "cpu/noise_stream.h"
int main(int argc, char** argv) {
  const unsigned long long seed = strtoull(argv[1], nullptr, 10);
  const unsigned long long position = strtoull(argv[2], nullptr, 10);
  const long long n = atoll(argv[3]);
  float* out = new float[n];
  corp::cpu::noise_into(position, n, (uint32_t)seed, (uint32_t)(seed >> 32), 1.0f, false, out);
  for (long long i = 0; i < n; ++i) printf("%.9g\n", out[i]);
  return 0;
}
"""


def _avx2_supported() -> bool:
    try:
        return "avx2" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("flags", [[], ["-mavx2", "-mfma"]], ids=["portable", "avx2"])
def test_generator_paths_match_reference(tmp_path, flags):
    if flags and not _avx2_supported():
        pytest.skip("CPU without AVX2")
    source = tmp_path / "gen.cpp"
    source.write_text(PROGRAM)
    binary = tmp_path / "gen"
    subprocess.run(["g++", "-O2", "-std=c++17", "-fopenmp-simd", *flags, f"-I{ROOT / 'csrc'}",
                    str(source), "-o", str(binary)], check=True, timeout=120)
    seed, position, n = (1 << 63) + 12345, (1 << 32) * 4 - 6, 203  # counter carries into hi word
    out = subprocess.run([str(binary), str(seed), str(position), str(n)], check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    values = torch.tensor([float(v) for v in out], dtype=torch.float32)
    assert_normals_close(values, ck.gaussian_noise((n,), seed, position, backend="torch"))
