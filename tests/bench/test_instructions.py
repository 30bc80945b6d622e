"""The callgrind reader of ``bench.instructions`` (valgrind itself is not needed)."""

from bench.instructions import kernel_instructions

# A trimmed callgrind file as written with --compress-strings=no --compress-pos=no: self costs
# follow each fn=; the line after calls= is a callee's inclusive cost and belongs to no one.
CALLGRIND = """\
# callgrind format
version: 1
positions: line
events: Ir

fn=0x0000000000001000
0 100
0 20
cfn=0x0000000000003000
calls=1 0
0 5000
fn=_PyEval_EvalFrameDefault
0 7
fn=0x0000000000003000'2
0 30
fn=0x0000000000002000
0 4
"""


def test_counts_self_cost_of_kernel_entries_only():
    kernel, total = kernel_instructions(CALLGRIND, {0x1000, 0x3000})
    assert kernel == 100 + 20 + 30  # recursion suffix stripped; the call's inclusive cost skipped
    assert total == 100 + 20 + 7 + 30 + 4
