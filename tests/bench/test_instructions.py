"""The callgrind reader of ``bench.instructions`` (valgrind itself is not needed)."""

from bench.instructions import kernel_costs

# A trimmed callgrind file as written with --compress-strings=no --compress-pos=no: self costs
# follow each fn=; the line after calls= is a callee's inclusive cost and belongs to no one.
CALLGRIND = """\
# callgrind format
version: 1
positions: line
events: Ir Bc Bcm

fn=0x0000000000001000
0 100 10 2
0 20
cfn=0x0000000000003000
calls=1 0
0 5000 300 30
fn=_PyEval_EvalFrameDefault
0 7 1
fn=0x0000000000003000'2
0 30 3 1
fn=0x0000000000002000
0 4
"""


def test_counts_self_cost_of_kernel_entries_only():
    kernel, total = kernel_costs(CALLGRIND, {0x1000, 0x3000})
    # The recursion suffix is stripped, the call's inclusive cost skipped, missing costs are 0.
    assert kernel == {"Ir": 100 + 20 + 30, "Bc": 10 + 3, "Bcm": 2 + 1}
    assert total == {"Ir": 100 + 20 + 7 + 30 + 4, "Bc": 10 + 1 + 3, "Bcm": 2 + 1}
