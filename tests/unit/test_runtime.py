"""The runtime section pins threads and CPU kernels before torch loads, and the manifest records it."""

import json
import os
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


def test_sqrt_exactly_rounded_under_the_portable_pins():
    """torch's CPU sqrt goes through MKL's vector math, whose last bits depend on the CPU under
    MKL_CBWR=COMPATIBLE (one in six float32 roots a unit off on this suite's machines). `pin_torch`
    replaces it with the exactly rounded root, for every way torch code calls it."""
    script = """
import json
import math
import os
from medrepro import runtime
from medrepro.config_sections import RuntimeConfig
runtime.pin(RuntimeConfig(threads=1, cpu_kernels='portable'))
runtime.pin_torch()
runtime.pin_torch()  # a second call registers nothing twice
import torch
g = torch.Generator().manual_seed(0)
x = torch.randn(100_000, generator=g).abs() + 0.1
exact = x.double().sqrt().float()  # float64's root rounds to float32's exact one (53 >= 2 * 24 + 2)
out = torch.empty(0)
w = x[:8].clone().requires_grad_()
torch.sqrt(w).sum().backward()
found = {
    "functional": int((torch.sqrt(x) != exact).sum()),
    "method": int((x.sqrt() != exact).sum()),
    "in_place": int((x.clone().sqrt_() != exact).sum()),
    "out": int((torch.sqrt(x, out=out) != exact).sum()),
    "bfloat16": int((x.bfloat16().sqrt() != x.bfloat16().double().sqrt().bfloat16()).sum()),
    "float64": int((x[:1000].double().sqrt() != torch.tensor([math.sqrt(v) for v in x[:1000].double().tolist()],
                                                              dtype=torch.float64)).sum()),
    "int": str(torch.sqrt(torch.tensor([4, 9])).tolist()),
    "zero_dim": float(torch.tensor(2.25).sqrt()),
    "grad": bool(torch.equal(w.grad, 0.5 / exact[:8])),
    "manifest": runtime.state()["exact_sqrt"],
}
print(json.dumps(found))
"""
    found = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      check=True).stdout)
    assert found == {"functional": 0, "method": 0, "in_place": 0, "out": 0, "bfloat16": 0, "float64": 0,
                     "int": "[2.0, 3.0]", "zero_dim": 1.5, "grad": True, "manifest": True}


def test_sqrt_left_to_torch_without_the_pin():
    script = ("from medrepro import runtime\n"
              "runtime.pin_torch()\n"
              "print(runtime.state()['exact_sqrt'])")
    env = {k: v for k, v in os.environ.items() if k != "MEDREPRO_EXACT_SQRT"}
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env=env).stdout.strip() == "False"
