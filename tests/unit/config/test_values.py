"""Value types: Dovecot's spellings of times, sizes, booleans, lists and networks."""

from __future__ import annotations

import ipaddress

import pytest

from palomar.config import values as v


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("31 secs", 31.0),
        ("31secs", 31.0),
        ("31s", 31.0),
        ("31", 31.0),
        ("1 sec", 1.0),
        ("2 mins", 120.0),
        ("2m", 120.0),
        ("1 minute", 60.0),
        ("500 ms", 0.5),
        ("500msecs", 0.5),
        ("1500 milliseconds", 1.5),
        ("1h", 3600.0),
        ("2 hours", 7200.0),
        ("1 day", 86400.0),
        ("3d", 259200.0),
        ("1 week", 604800.0),
        ("2w", 1209600.0),
        ("0", 0.0),
        ("1.5 secs", 1.5),
        ("  3 secs ", 3.0),
        ("3 SECS", 3.0),
    ],
)
def test_time_parsing(text: str, seconds: float) -> None:
    assert v.parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "secs", "5 parsecs", "-1 secs", "1 h 30 m", "ten secs", "1,5s"])
def test_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected a time"):
        v.parse_time(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100", 100),
        ("100B", 100),
        ("512k", 512 * 1024),
        ("512 kB", 512 * 1024),
        ("4 KiB", 4096),
        ("10M", 10 * 1024**2),
        ("10 MB", 10 * 1024**2),
        ("1 G", 1024**3),
        ("1g", 1024**3),
        ("2 GB", 2 * 1024**3),
        ("1T", 1024**4),
        ("1.5M", 1536 * 1024),
    ],
)
def test_size_parsing(text: str, size: int) -> None:
    assert v.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "10 X", "10 MBB", "-1M", "1.5"])
def test_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        v.parse_size(text)


@pytest.mark.parametrize(("seconds", "text"), [(31, "31 secs"), (120, "2 mins"), (3600, "1 hours"),
                                               (0.5, "500 ms"), (0, "0"), (90, "90 secs")])
def test_time_formatting_reads_back(seconds: float, text: str) -> None:
    assert v.format_time(seconds) == text
    assert v.parse_time(text) == seconds


@pytest.mark.parametrize(("size", "text"), [(100, "100"), (1024, "1k"), (10 * 1024**2, "10M"), (1536, "1536")])
def test_size_formatting_reads_back(size: int, text: str) -> None:
    assert v.format_size(size) == text
    assert v.parse_size(text) == size


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("no", False), ("YES", True), ("y", True),
                                             ("n", False), ("1", True), ("0", False)])
def test_bool(text: str, value: bool) -> None:
    assert v.BOOL.parse(text) is value


def test_bool_error_message() -> None:
    with pytest.raises(ValueError, match=r"^expected yes or no, got 'maybe'$"):
        v.BOOL.parse("maybe")


def test_uint_and_port() -> None:
    assert v.UINT.parse("100") == 100
    assert v.PORT.parse("65535") == 65535
    for bad_type, text in ((v.UINT, "-1"), (v.UINT, "1.5"), (v.PORT, "65536"), (v.PORT, "http")):
        with pytest.raises(ValueError):
            bad_type.parse(text)


def test_lists_split_on_spaces_and_commas() -> None:
    assert v.WORDS.parse("a b,c ,  d") == ["a", "b", "c", "d"]
    assert v.WORDS.parse("") == []


def test_networks_accept_cidr_and_bare_addresses() -> None:
    nets = v.NETWORKS.parse("127.0.0.1 ::1 192.168.1.0/24, 10.1.2.3/8")
    assert nets == [
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("10.0.0.0/8"),
    ]
    assert ipaddress.ip_address("192.168.1.77") in nets[2]
    with pytest.raises(ValueError, match="expected IP networks.*'192.168.1.0/33'"):
        v.NETWORKS.parse("10.0.0.0/8 192.168.1.0/33")


def test_listen_addresses() -> None:
    assert v.ADDRESSES.parse("*, ::") == ["*", "::"]
    assert v.ADDRESSES.parse("127.0.0.1 [::1] mail.example.org") == ["127.0.0.1", "::1", "mail.example.org"]
    with pytest.raises(ValueError, match="expected addresses"):
        v.ADDRESSES.parse("127.0.0.1 bad_host!")


def test_enum() -> None:
    ssl = v.enum("no", "yes", "required")
    assert ssl.name == "no|yes|required"
    assert ssl.parse("required") == "required"
    with pytest.raises(ValueError, match=r"expected one of no, yes, required, got 'always'"):
        ssl.parse("always")
