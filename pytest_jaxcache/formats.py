"""How figures are written for people: sizes and seconds, one format each, used by
every surface (terminal, job summary, command line, notices)."""

from __future__ import annotations


def format_size(num_bytes: int) -> str:
    """A short human size, binary units: ``1536`` -> ``"1.5 KiB"``."""
    if abs(num_bytes) < 1024:
        return f"{num_bytes} B"
    size = num_bytes / 1024
    for unit in ("KiB", "MiB"):
        if abs(size) < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_secs(seconds: float) -> str:
    """``1.234`` -> ``"1.23s"``: every figure of seconds in the report."""
    return f"{seconds:.2f}s"


def format_duration(secs: float) -> str:
    """A duration as a clock would say it, for the timeline's labels and tooltips, where
    one test takes milliseconds and a session an hour: "0.042s", "12.3s", "4:05.2",
    "1:02:30"."""
    if secs < 10:
        return f"{secs:.3f}s"
    if secs < 60:
        return f"{secs:.1f}s"
    minutes, rest = divmod(secs, 60)
    if minutes < 60:
        return f"{int(minutes)}:{rest:04.1f}"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}:{int(minutes):02d}:{int(rest):02d}"


def format_rate(rate: float | None) -> str:
    """A hit rate (``None``: nothing to rate) as a percentage."""
    return "n/a" if rate is None else f"{100 * rate:.1f}%"
