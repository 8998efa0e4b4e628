"""Small formatting helpers shared by the reports of every task: numbers, markdown tables and
JSON without NaN/inf (report.json, seeds.json must stay valid JSON)."""

from __future__ import annotations

import math


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    """`value` formatted with `spec`, or an en dash when it is missing."""
    return "–" if value is None else f"{value:{spec}}{suffix}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the first column left-aligned, the rest right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def json_safe(obj):
    """`obj` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
