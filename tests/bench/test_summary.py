"""The issue-11 summary: derived figures, verdicts against the targets, and the LMTP figures handed from
lmtp_bench's section to imap_bench's through the markdown file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dovecot_proxy import Route, render_lmtp_proxy_conf, routes_file
from imap_client import small_command_lines
from lmtp_bench import fan_out
from report import replace_section
from summary import (
    SPECS,
    added_latency,
    at_least,
    at_most,
    embed_figures,
    lmtp_figures,
    logins_per_core,
    read_figures,
    summary_rows,
    verdict,
)


def spec(key: str):
    return next(s for s in SPECS if key in s.keys)


def test_added_latency_is_the_paths_percentiles_minus_directs() -> None:
    direct = [1.0] * 98 + [5.0, 6.0]
    proxied = [3.0] * 98 + [9.0, 10.0]
    assert added_latency(proxied, direct) == (2.0, 4.0)


def test_logins_per_core_inverts_cpu_per_login() -> None:
    assert logins_per_core(0.5) == 2000
    assert logins_per_core(0.0) == 0.0


@pytest.mark.parametrize(("check", "value", "limit", "expected"), [
    (at_most, 0.5, 0.5, "met"),
    (at_most, 1.5, 0.5, "missed (3.0× the target)"),
    (at_least, 0.8, 0.8, "met"),
    (at_least, 0.4, 0.8, "missed (0.50× the target)"),
])
def test_verdicts(check, value: float, limit: float, expected: str) -> None:
    assert check(value, limit) == expected


def test_relative_targets_compare_with_dovecots_proxy_in_the_same_run() -> None:
    cheaper = {"login_cpu": {"palomar": 0.6, "dovecot": 0.7}}
    dearer = {"login_cpu": {"palomar": 1.4, "dovecot": 0.7}}
    assert verdict(cheaper, spec("login_cpu")) == "met"
    assert verdict(dearer, spec("login_cpu")) == "missed (2.0× the target)"


def test_a_row_with_two_targets_is_met_only_when_both_are() -> None:
    row = spec("idle_pss")
    assert verdict({"idle_pss": {"palomar": 7.9}, "idle_sockets": {"palomar": 2.0}}, row) == "met"
    assert verdict({"idle_pss": {"palomar": 7.9}, "idle_sockets": {"palomar": 4.0}}, row) == \
        "missed (2.0× the target)"
    latency = spec("latency_p50")
    assert verdict({"latency_p50": {"palomar": 0.8}, "latency_p99": {"palomar": 9.0}}, latency) == \
        "missed (3.0× the target)"


def test_processes_must_cover_every_core() -> None:
    assert verdict({"processes": {"palomar": 1, "cores": 2}}, spec("processes")) == "missed (0.50× the target)"
    assert verdict({"processes": {"palomar": 2, "cores": 2}}, spec("processes")) == "met"


def test_every_issue_row_appears_and_unmeasured_rows_say_so() -> None:
    rows = summary_rows({"login_cpu": {"palomar": 3.0, "dovecot": 1.0, "nginx": 0.5, "direct": 4.0}})
    assert len(rows) == len(SPECS) == 10
    login = rows[0]
    assert login[1:6] == ["3.00", "1.00", "0.50", "4.00 (backend's own CPU)", "3.00"]
    assert login[-1] == "missed (3.0× the target)"
    small = next(r for r in rows if r[0].startswith("small commands"))
    assert small[1:6] == ["–", "–", "–", "–", "–"]
    assert small[-1] == "not measured in this run"


def test_two_figure_rows_print_both_and_both_ratios() -> None:
    rows = summary_rows({"lmtp_1": {"palomar": 2.4, "dovecot": 0.8}, "lmtp_10": {"palomar": 1.5, "dovecot": 0.3}})
    lmtp = next(r for r in rows if r[0].startswith("LMTP"))
    assert lmtp[1:3] == ["2.40 / 1.50", "0.80 / 0.30"]
    assert lmtp[5] == "3.00 / 5.00"
    assert lmtp[-1] == "missed (3.0× the target); missed (5.0× the target)"


def test_lmtp_figures_survive_the_markdown_file_and_a_rewrite_of_another_section() -> None:
    figures = lmtp_figures([("direct", 1, 0.0, 2.1), ("palomar", 1, 4.4, 2.8), ("dovecot-proxy", 1, 1.1, 3.3),
                            ("palomar", 10, 3.7, 1.7), ("dovecot-proxy", 10, 0.4, 1.6)])
    assert figures == {"lmtp_1": {"direct": 2.1, "palomar": 4.4, "dovecot": 1.1},
                       "lmtp_10": {"palomar": 3.7, "dovecot": 0.4}}
    doc = replace_section("", "LMTP delivery (issue 5)", "table\n\n" + embed_figures(figures))
    doc = replace_section(doc, "IMAP path (issue 3)", "imap numbers")
    assert read_figures(doc) == figures
    assert read_figures("no figures here") == {}
    assert read_figures("<!-- lmtp-figures {broken -->") == {}


def test_fan_out_takes_half_from_each_backend_and_no_user_twice() -> None:
    first = [f"a{i}" for i in range(12)]
    second = [f"b{i}" for i in range(7)]
    lists = fan_out(first, second, 10)
    assert lists == [["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"]]
    assert fan_out(first[:4], second, 10) == []
    assert len(fan_out(first, [f"c{i}" for i in range(12)], 4)) == 6


def test_small_commands_alternate_flags_and_header_over_the_messages() -> None:
    lines = small_command_lines(6, 2)
    assert lines == [b"FETCH 1 FLAGS", b"FETCH 1 BODY.PEEK[HEADER]", b"FETCH 2 FLAGS",
                     b"FETCH 2 BODY.PEEK[HEADER]", b"FETCH 1 FLAGS", b"FETCH 1 BODY.PEEK[HEADER]"]


def test_lmtp_proxy_passdb_lines_carry_no_master_login() -> None:
    assert routes_file([Route("u1", "", "127.0.0.2", 24)]) == "u1:{PLAIN}::::::host=127.0.0.2 port=24\n"
    assert "master=m pass=p" in routes_file([Route("u1", "x", "127.0.0.2", 143, "m", "p")])
    conf = render_lmtp_proxy_conf(Path("/r"), "127.0.0.22", 2424)
    assert "lmtp_proxy = yes" in conf and "protocols = lmtp" in conf and "port = 2424" in conf


def test_no_ratio_against_a_dovecot_figure_of_zero_or_less() -> None:
    rows = summary_rows({"latency_p50": {"palomar": 2.0, "dovecot": -0.1}, "latency_p99": {"palomar": 4.0, "dovecot": 2.0}})
    latency = next(r for r in rows if r[0].startswith("added latency"))
    assert latency[5] == "– / 2.00"


def test_interleaved_rounds_start_on_each_path_in_turn() -> None:
    from imap_bench import rotated

    keys = ("direct", "palomar", "dovecot")
    assert [rotated(keys, r) for r in range(4)] == [
        ("direct", "palomar", "dovecot"), ("palomar", "dovecot", "direct"), ("dovecot", "direct", "palomar"),
        ("direct", "palomar", "dovecot")]
