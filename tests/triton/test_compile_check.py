"""The compiled Triton path, which the CPU interpreter never runs, builds down to cubins for
sm_90 (python -m saekit.triton.compile_check), and a kernel that cannot compile is reported."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

# Without TRITON_INTERPRET: the kernels must be defined for compilation.
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

BROKEN = """
import triton, triton.language as tl
from saekit.triton.compile_check import Job, compile_job

@triton.jit
def broken(x_ptr, BLOCK: tl.constexpr):
    v = tl.load(x_ptr + tl.arange(0, BLOCK))
    tl.store(x_ptr + tl.arange(0, BLOCK), tl.dot(v, v))  # a dot of two vectors does not compile

try:
    compile_job(Job("broken", broken, {"x_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 16}), 90)
except Exception as e:
    print("compile error:", type(e).__name__)
else:
    print("compiled")
"""


def test_every_kernel_compiles_for_sm90():
    proc = subprocess.run([sys.executable, "-m", "saekit.triton.compile_check", "--arch", "90", "--quick"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("sm_90 ")]
    built = {line.split(" ")[1] for line in lines}
    assert {"topk_encode", "gradient_topk_encode", "sparse_decode", "sparse_decode_backward", "folded"} <= built
    assert all(line.split(": ")[1].startswith("ok, ") and " registers, " in line for line in lines), lines
    assert proc.stdout.rstrip().endswith("all compiled")


def test_a_kernel_that_cannot_compile_is_reported(tmp_path):
    script = tmp_path / "broken.py"  # @triton.jit reads its source from a file
    script.write_text(BROKEN)
    proc = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compile error:" in proc.stdout


def test_refuses_to_run_in_the_interpreter():
    proc = subprocess.run([sys.executable, "-m", "saekit.triton.compile_check", "--quick"],
                          env={**ENV, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unset TRITON_INTERPRET" in proc.stderr


def test_ptxas_report_is_parsed():
    from saekit.triton.compile_check import Resources, parse_ptxas_log

    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    1120 bytes stack frame, 1120 bytes spill stores, 624 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 1120 bytes cumulative stack size\n")
    got = parse_ptxas_log(log)
    assert got == Resources(255, 1120, 624)
    assert str(got) == "255 registers, spills 1120 B stored / 624 B loaded"
    assert str(Resources(64, 0, 0)) == "64 registers, no spills"
    with pytest.raises(ValueError, match="no register or spill line"):
        parse_ptxas_log("ptxas fatal   : something else")


ALIGNED = """
import triton, triton.language as tl
from saekit.triton.compile_check import Job, compile_job, launch_attrs

@triton.jit
def copy(x_ptr, y_ptr, d, stride_x, k_aux, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y_ptr + i * stride_x, tl.load(x_ptr + i * stride_x, mask=i < d + k_aux), mask=i < d)

job = Job("copy", copy, {"x_ptr": "*fp32", "y_ptr": "*fp32", "d": "i32", "stride_x": "i32", "k_aux": "i32",
                         "BLOCK": "constexpr"}, {"BLOCK": 16})
print(sorted(i for (i,) in launch_attrs(job)))
print(compile_job(job, 90))
"""


def test_builds_are_specialised_as_launches_at_the_issues_shapes(tmp_path):
    """Pointers, d and strides carry tt.divisibility = 16 (k_aux and constexprs do not), and a
    build with those attributes compiles."""
    script = tmp_path / "aligned.py"  # @triton.jit reads its source from a file
    script.write_text(ALIGNED)
    proc = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "[0, 1, 2, 3]" and "registers" in lines[1]
