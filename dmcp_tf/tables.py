"""Text tables: counts read at a glance, aligned console tables, markdown tables, a pruned structure.

Plain Python and NumPy (no Keras, nothing else of dmcp_tf): the run's report, the
console summary and `dmcp_tf.prune`'s `structure.md` all write with these.
"""

import numpy as np

_UNITS = (("G", 1e9), ("M", 1e6), ("K", 1e3))


def format_count(n):
    """Formats a count readably: `672832704` -> `"672.8M"`, `12` -> `"12"`."""
    for suffix, scale in _UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def _format_cell(value):
    """Text of one table cell: `None` -> `"-"`, floats to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _is_number(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _table_cells(rows, columns):
    """Headers, cell texts and right-alignment flags (numeric columns) of a table."""
    keys = [key for key, _ in columns]
    headers = [header for _, header in columns]
    cells = [[_format_cell(row.get(key)) for key in keys] for row in rows]
    numeric = [
        any(_is_number(row.get(key)) for row in rows)
        and all(row.get(key) is None or _is_number(row.get(key)) for row in rows)
        for key in keys
    ]
    return headers, cells, numeric


def summary_table(rows, columns):
    """Plain-text table with aligned columns, for the console.

    Args:
        rows: list of dicts.
        columns: list of `(key, header)`; a missing or `None` value shows as "-".

    Returns:
        The table as lines of equal width: header, dashes, one line per row.
    """
    headers, cells, numeric = _table_cells(rows, columns)
    widths = [max(map(len, column)) for column in zip(headers, *cells)]

    def line(texts):
        return "  ".join(
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(texts, widths, numeric)
        )

    dashes = ["-" * width for width in widths]
    return "\n".join(line(texts) for texts in [headers, dashes, *cells])


def markdown_table(rows, columns):
    """GitHub markdown table; same arguments as `summary_table`."""
    headers, cells, numeric = _table_cells(rows, columns)
    separator = ["---:" if right else "---" for right in numeric]

    def line(texts):
        return "| " + " | ".join(text.replace("|", r"\|") for text in texts) + " |"

    return "\n".join(line(texts) for texts in [headers, separator, *cells])


def structure_markdown(gate_rows, layer_rows, title):
    """Markdown description of a pruned structure (DMCP paper, Tables 7/8).

    Args:
        gate_rows: dicts `gate, kept, channels, expected`, in network order.
        layer_rows: dicts `layer, type, in_kept, in_full, out_kept, out_full,
            macs_kept, macs_full`, one per conv/dense layer in network order.
        title: text of the title line.

    Returns:
        Title line, gates table, layers table and a line of total MACs.
    """
    gates = [
        {
            "gate": row["gate"],
            "kept": f"{row['kept']} / {row['channels']}",
            "percent": f"{100 * row['kept'] / row['channels']:.1f}%",
            "expected": float(row["expected"]),
        }
        for row in gate_rows
    ]
    layers = [
        {
            "layer": row["layer"],
            "type": row["type"],
            "in": f"{row['in_kept']} / {row['in_full']}",
            "out": f"{row['out_kept']} / {row['out_full']}",
            "macs_kept": format_count(row["macs_kept"]),
            "macs_full": format_count(row["macs_full"]),
        }
        for row in layer_rows
    ]
    kept = sum(row["macs_kept"] for row in layer_rows)
    full = sum(row["macs_full"] for row in layer_rows)
    gate_table = markdown_table(
        gates, [("gate", "gate"), ("kept", "kept / channels"), ("percent", "kept %"), ("expected", "E[c]")]
    )
    layer_table = markdown_table(
        layers,
        [
            ("layer", "layer"),
            ("type", "type"),
            ("in", "in channels kept / full"),
            ("out", "out channels kept / full"),
            ("macs_kept", "MACs kept"),
            ("macs_full", "MACs full"),
        ],
    )
    totals = (
        f"**Total MACs:** {format_count(kept)} kept / {format_count(full)} full "
        f"(ratio {kept / full:.4f}, {100 * kept / full:.2f}%)"
    )
    return "\n\n".join([f"### {title}", gate_table, layer_table, totals]) + "\n"
