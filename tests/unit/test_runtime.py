"""The runtime section pins threads and CPU kernels before torch loads, and the manifest records it."""

import json
import subprocess
import sys

from medrepro import runtime
from medrepro.config_sections import RuntimeConfig


def test_environment_of_each_setting():
    assert runtime.environment(RuntimeConfig()) == {}
    env = runtime.environment(RuntimeConfig(threads=1, cpu_kernels="portable"))
    assert env["OMP_NUM_THREADS"] == "1" and env["ATEN_CPU_CAPABILITY"] == "avx2"


def test_pinned_in_a_fresh_process_before_torch_loads():
    script = ("import json; from medrepro import runtime; from medrepro.config_sections import RuntimeConfig\n"
              "runtime.pin(RuntimeConfig(threads=1, cpu_kernels='portable'))\n"
              "print(json.dumps(runtime.state()))")
    state = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      check=True).stdout)
    assert state["torch_threads"] == 1 and state["cpu_capability"] == "AVX2"
    assert state["env"]["MKL_CBWR"] == "COMPATIBLE" and state["env"]["OPENBLAS_NUM_THREADS"] == "1"


def test_faiss_kernels_pinned_before_faiss_loads():
    """FAISS picks its distance kernels when it loads: an AVX-512 machine left free scores flat
    searches in other last bits than an AVX2 one, and the mined candidates differ between machines."""
    script = ("import json; from medrepro import runtime; from medrepro.config_sections import RuntimeConfig\n"
              "runtime.pin(RuntimeConfig(threads=1, cpu_kernels='portable'))\n"
              "import faiss\n"
              "print(json.dumps(runtime.state()))")
    state = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      check=True).stdout)
    assert state["faiss_simd_level"] == "AVX2"
