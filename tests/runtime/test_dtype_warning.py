"""A search that asks for bfloat16 scoring on a CPU that emulates bfloat16 is told so."""

from __future__ import annotations

import evomerge.runtime.preflight as preflight
from evomerge.runtime.preflight import cpu_has_bf16, dtype_warning


def test_bf16_units_are_read_from_the_cpu_flags() -> None:
    assert cpu_has_bf16("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16("flags : fpu avx2 amx_bf16\n")
    assert not cpu_has_bf16("processor : 0\nflags : fpu sse avx2 avx512f\n")


def test_the_warning_names_the_fix_only_where_it_applies(monkeypatch) -> None:
    monkeypatch.setattr(preflight, "cpu_has_bf16", lambda cpuinfo=None: False)
    line = dtype_warning("bfloat16", "cpu")
    assert line is not None and "float32" in line and "\n" not in line
    assert dtype_warning("float32", "cpu") is None and dtype_warning("bfloat16", "cuda") is None
    monkeypatch.setattr(preflight, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert dtype_warning("bfloat16", "cpu") is None
