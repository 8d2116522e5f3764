"""The issue-11 summary table: one row per measure of the issue, palomar beside Dovecot's proxy, nginx's
mail proxy and direct Dovecot, the ratio palomar / Dovecot proxy, the issue's target and whether this
run met it. Pure: the benchmarks collect the figures, this module only compares and formats them.

Figures are `measure key -> {path -> value}` with the paths `palomar`, `dovecot`, `nginx`, `direct`.
The LMTP figures come from `lmtp_bench.py`, which embeds them in its own section as a comment
(`embed_figures`), so the IMAP section's summary can show them without running LMTP itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from report import percentile, table

Figures = dict[str, dict[str, float]]
"""measure -> path -> value; `lmtp_bench` adds a "run" entry (date, load) with strings."""
PATHS = ("palomar", "dovecot", "nginx", "direct")
_MARKER = "lmtp-figures"


# --- derived figures ----------------------------------------------------------------------------


def added_latency(session_ms: Sequence[float], direct_ms: Sequence[float]) -> tuple[float, float]:
    """What a path adds to a session over direct Dovecot: (p50, p99) of its sessions minus direct's."""
    return (percentile(session_ms, 50) - percentile(direct_ms, 50),
            percentile(session_ms, 99) - percentile(direct_ms, 99))


def logins_per_core(cpu_ms_per_login: float) -> float:
    """Logins one fully busy core of the tier could serve per second (0 when nothing was measured)."""
    return 1000 / cpu_ms_per_login if cpu_ms_per_login > 0 else 0.0


def lmtp_figures(rows: Sequence[tuple[str, int, float, float]]) -> Figures:
    """(path, recipients, proxy tier CPU ms/delivery, Dovecot backends CPU ms/delivery) rows of the LMTP
    bench -> `lmtp_<recipients>` figures; the direct path has no tier, so its entry is Dovecot's own CPU."""
    names = {"palomar": "palomar", "dovecot-proxy": "dovecot", "direct": "direct"}
    figures: Figures = {}
    for path, recipients, tier_ms, dovecot_ms in rows:
        figures.setdefault(f"lmtp_{recipients}", {})[names[path]] = dovecot_ms if path == "direct" else tier_ms
    return figures


def embed_figures(figures: Figures) -> str:
    """An HTML comment (invisible in rendered markdown) that `read_figures` finds again."""
    return f"<!-- {_MARKER} {json.dumps(figures, sort_keys=True)} -->"


def read_figures(document: str) -> Figures:
    """The figures `embed_figures` left in `document`; empty when there are none or they do not parse."""
    match = re.search(rf"<!-- {_MARKER} (.*?) -->", document)
    if not match:
        return {}
    try:
        loaded = json.loads(match.group(1))
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


# --- verdicts -----------------------------------------------------------------------------------


def at_most(value: float, limit: float) -> str:
    return "met" if value <= limit else f"missed ({value / limit:.1f}× the target)" if limit > 0 else "missed"


def at_least(value: float, limit: float) -> str:
    return "met" if value >= limit else f"missed ({value / limit:.2f}× the target)"


def both(*verdicts: str) -> str:
    """One verdict for a row with several targets: met only when every part is."""
    missed = [v for v in verdicts if v != "met"]
    return "met" if not missed else "; ".join(missed)


@dataclass(frozen=True)
class Spec:
    """One row of the issue's table: which figures, how to print them, the target and its check."""

    label: str
    keys: tuple[str, ...]
    digits: int
    target: str
    check: Callable[[Figures], str]
    direct_note: str = ""
    """What the direct column means when it is not the same quantity (CPU rows: Dovecot's own CPU)."""


def _p(f: Figures, key: str) -> float:
    return f[key]["palomar"]


def _d(f: Figures, key: str) -> float:
    return f[key]["dovecot"]


SPECS = (
    Spec("CPU per IMAP login (LOGIN+SELECT+LOGOUT, 50 concurrent), proxy tier, ms", ("login_cpu",), 2,
         "≤ Dovecot proxy (same run); stretch ≤ 0.5 ms", lambda f: at_most(_p(f, "login_cpu"), _d(f, "login_cpu")),
         "backend's own CPU"),
    Spec("CPU per IMAPS login (50 concurrent), proxy tier, ms", ("imaps_login_cpu",), 2, "≤ Dovecot proxy",
         lambda f: at_most(_p(f, "imaps_login_cpu"), _d(f, "imaps_login_cpu"))),
    Spec("logins/s per core of the proxy tier (1000 / CPU ms per login, 50 concurrent)", ("logins_per_core",), 0,
         "≥ Dovecot proxy (the CPU-per-login target, per core)",
         lambda f: at_least(_p(f, "logins_per_core"), _d(f, "logins_per_core")), "backend's own"),
    Spec("PSS per idle IMAPS connection, KiB", ("idle_tls_pss",), 1, "≤ 16 KiB",
         lambda f: at_most(_p(f, "idle_tls_pss"), 16)),
    Spec("PSS per idle plaintext connection, KiB / kernel sockets per session", ("idle_pss", "idle_sockets"), 1,
         "≤ 8 KiB and 2 sockets per session",
         lambda f: both(at_most(_p(f, "idle_pss"), 8), at_most(_p(f, "idle_sockets"), 2))),
    Spec("small commands (FETCH FLAGS / FETCH HEADER in one session), tier CPU per command, µs", ("small_cmd_us",), 0,
         "≤ 50 µs", lambda f: at_most(_p(f, "small_cmd_us"), 50), "backend's own CPU"),
    Spec("added latency per session, 1 client, p50 / p99, ms", ("latency_p50", "latency_p99"), 2, "≤ +1 ms / +3 ms",
         lambda f: both(at_most(_p(f, "latency_p50"), 1), at_most(_p(f, "latency_p99"), 3)),
         "its own session time"),
    Spec("LMTP tier CPU per delivery, 1 rcpt / 10 rcpts over 2 backends, ms (Dovecot: its LMTP proxy)",
         ("lmtp_1", "lmtp_10"), 2, "≤ Dovecot LMTP proxy",
         lambda f: both(at_most(_p(f, "lmtp_1"), _d(f, "lmtp_1")), at_most(_p(f, "lmtp_10"), _d(f, "lmtp_10"))),
         "Dovecot's own CPU"),
    Spec("processes of one proxy instance (idle run; palomar: the proxy, backend services apart)", ("processes",), 0,
         "uses every core", lambda f: at_least(_p(f, "processes"), f["processes"]["cores"])),
    Spec("20 MB FETCH relay vs direct (MB/s ratio)", ("fetch_ratio",), 2, "≥ 0.8",
         lambda f: at_least(_p(f, "fetch_ratio"), 0.8)),
)


# --- rendering ----------------------------------------------------------------------------------


def _cell(figures: Figures, spec: Spec, path: str) -> str:
    values = [figures.get(key, {}).get(path) for key in spec.keys]
    if all(v is None for v in values):
        return "–"
    text = " / ".join("–" if v is None else f"{v:.{spec.digits}f}" for v in values)
    return f"{text} ({spec.direct_note})" if path == "direct" and spec.direct_note else text


def _ratio(figures: Figures, spec: Spec) -> str:
    parts = []
    for key in spec.keys:
        pal, dov = figures.get(key, {}).get("palomar"), figures.get(key, {}).get("dovecot")
        parts.append(f"{pal / dov:.2f}" if pal is not None and dov is not None and dov > 0 else "–")
    return " / ".join(parts)


def verdict(figures: Figures, spec: Spec) -> str:
    try:
        return spec.check(figures)
    except KeyError:
        return "not measured in this run"


def summary_rows(figures: Figures) -> list[list[str]]:
    return [[spec.label, *(_cell(figures, spec, path) for path in PATHS), _ratio(figures, spec), spec.target,
             verdict(figures, spec)] for spec in SPECS]


def summary_table(figures: Figures) -> str:
    return table(["measure (issue 11)", "palomar", "Dovecot CE proxy", "nginx mail (+auth_http)", "direct Dovecot",
                  "palomar / Dovecot proxy", "target for palomar", "this run"], summary_rows(figures))
