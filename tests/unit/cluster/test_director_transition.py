"""Director transition rules: placing new users where the director had them, and the map import plan."""

from __future__ import annotations

from uuid import NAMESPACE_DNS, uuid5

import pytest

from palomar.cluster.director_hash import DirectorRing, MailHost, user_hash
from palomar.cluster.director_transition import (
    DirectorOutputError,
    DirectorTransition,
    MapRow,
    director_group_name,
    director_placement,
    parse_director_map,
    parse_director_status,
    plan_import,
    render_transition,
)
from palomar.cluster.hashing import default_group_name
from palomar.cluster.model import Backend, Group, Site, SiteView, User
from palomar.cluster.routing import Assign, Routed, Serve, group_of, route_user
from palomar.config.director_transition import load_transition

SITE = Site(id=uuid5(NAMESPACE_DNS, "east.test"), name="east")
STATUS = {"on": "online", "off": "offline", "standby": "standby"}
NOW = 1_700_000_000.0
# The director ring of tests/unit/cluster/test_director_hash.py (ring A), its servers named b2..b4 here.
TRANSITION = DirectorTransition(
    DirectorRing((MailHost("127.0.0.2"), MailHost("127.0.0.3"), MailHost("127.0.0.4"))),
    {"127.0.0.2": "b2", "127.0.0.3": "b3", "127.0.0.4": "b4"},
)
# Users and the server a real director hashed them to in ring A (from test_director_hash.py).
ON_B2, ON_B3, ON_B4 = "user2@example.test", "user3@example.test", "user1@example.test"


def bid(name: str) -> object:
    return uuid5(NAMESPACE_DNS, f"{name}.backend.test")


def view(spec: str) -> SiteView:
    """"b2 b3:off b4:on/0": b2 online, b3 offline, b4 online with load factor 0."""
    backends = []
    for token in spec.split():
        name, _, rest = token.partition(":")
        status, _, lf = (rest or "on").partition("/")
        backends.append(Backend(id=bid(name), site_id=SITE.id, host=name, status=STATUS[status],
                                load_factor=int(lf or 100)))
    return SiteView(SITE, tuple(backends))


def test_backend_for_follows_the_ring_and_the_name_table() -> None:
    assert [TRANSITION.backend_for(u) for u in (ON_B2, ON_B3, ON_B4)] == ["b2", "b3", "b4"]


PLACEMENT_CASES = [
    # (site, user, placed on)
    ("b2 b3 b4", ON_B3, "b3"),
    ("b2 b3 b4", ON_B4, "b4"),
    ("b2 b3:off b4", ON_B3, None),  # offline: no new group there
    ("b2 b3:standby b4", ON_B3, None),
    ("b2 b3:on/0 b4", ON_B3, None),  # draining: no new groups
    ("b3:on/0", ON_B3, "b3"),  # unless every online backend drains
    ("b2 b4", ON_B3, None),  # the director's server is no backend of this site
]


@pytest.mark.parametrize(("spec", "username", "expected"), PLACEMENT_CASES)
def test_director_placement(spec: str, username: str, expected: str | None) -> None:
    placed = director_placement(username, view(spec), TRANSITION)
    assert (placed.host if placed else None) == expected


def test_no_transition_places_nobody() -> None:
    assert director_placement(ON_B3, view("b2 b3 b4"), None) is None


def test_new_user_joins_a_director_group_started_on_the_directors_backend() -> None:
    site = view("b2 b3 b4")
    decision = route_user(ON_B3, None, {}, site, group_count=100, now=NOW, director=TRANSITION)
    assert isinstance(decision, Routed)
    expected_group = director_group_name("b3", ON_B3, 100)
    assert expected_group.startswith("director-b3-")
    assert (decision.backend.host, decision.group_name) == ("b3", expected_group)
    assert decision.user_write == User(ON_B3, expected_group)
    assert isinstance(decision.group_decision, Assign)
    assert decision.group_write is not None and decision.group_write.group.backend_id == bid("b3")
    assert decision.group_write.group.alt_backend_id not in (None, bid("b3"))
    assert group_of(ON_B3, None, 100, site, TRANSITION) == expected_group


def test_director_group_already_moved_elsewhere_is_served_where_it_is() -> None:
    """After the first placement the group is an ordinary group: balancing and moves decide."""
    name = director_group_name("b3", ON_B3, 100)
    moved = Group(SITE.id, name, backend_id=bid("b2"), alt_backend_id=bid("b4"))
    decision = route_user(ON_B3, None, {name: moved}, view("b2 b3 b4"), group_count=100, now=NOW,
                          director=TRANSITION)
    assert isinstance(decision, Routed) and isinstance(decision.group_decision, Serve)
    assert decision.backend.host == "b2"


def test_user_with_a_group_is_not_looked_up() -> None:
    """The seed: the transition lookup is made only for a user without a backend yet."""
    user = User(ON_B3, "default-7")
    groups = {"default-7": Group(SITE.id, "default-7", backend_id=bid("b2"))}
    decision = route_user(ON_B3, user, groups, view("b2 b3 b4"), group_count=100, now=NOW, director=TRANSITION)
    assert isinstance(decision, Routed)
    assert (decision.backend.host, decision.group_name, decision.user_write) == ("b2", "default-7", None)


def test_director_backend_unusable_falls_back_to_the_default_group() -> None:
    site = view("b2 b3:off b4")
    decision = route_user(ON_B3, None, {}, site, group_count=100, now=NOW, director=TRANSITION)
    assert isinstance(decision, Routed)
    assert decision.group_name == default_group_name(ON_B3, 100)
    assert decision.backend.host in ("b2", "b4")


# --- doveadm director map -----------------------------------------------------------------------

# Captured from `doveadm director map` of a Dovecot 2.3.19.1 director (table, -f tab, -f flow).
TABLE = (
    "user                       hash       mail server ip expire time        \n"
    "user1@example.test         2607320544 127.0.0.2      2026-12-05 00:10:17\n"
    "<unknown>                  117045946  127.0.0.3      2026-12-05 00:10:20\n"
)
TAB = """\
user\thash\tmail server ip\texpire time
user1@example.test\t2607320544\t127.0.0.2\t2026-12-05 00:10:17
<unknown>\t117045946\t127.0.0.3\t2026-12-05 00:10:20
"""
FLOW = """\
user=user1@example.test hash=2607320544 mail server ip=127.0.0.2 expire time=2026-12-05 00:10:17
user=<unknown> hash=117045946 mail server ip=127.0.0.3 expire time=2026-12-05 00:10:20
"""


@pytest.mark.parametrize("text", [TABLE, TAB, FLOW], ids=["table", "tab", "flow"])
def test_map_formats(text: str) -> None:
    rows = parse_director_map(text)
    assert [(r.user, r.user_hash, r.ip) for r in rows] == [
        ("user1@example.test", 2607320544, "127.0.0.2"), ("<unknown>", 117045946, "127.0.0.3")]
    assert user_hash("user1@example.test") == 2607320544  # the director's own hash of the user


def test_tab_format_keeps_spaces_in_user_names() -> None:
    [row] = parse_director_map("my user@x\t1\t10.0.0.1\t2026-12-05 00:10:17\n")
    assert row.user == "my user@x"


@pytest.mark.parametrize(("text", "message"), [
    ("user1 notahash 127.0.0.2 2026-12-05 00:10:17\n", "line 1: 'notahash' is not a user hash"),
    ("user1 4294967296 127.0.0.2 2026-12-05 00:10:17\n", "is not a user hash"),
    ("user1 12 mail1 2026-12-05 00:10:17\n", "line 1: 'mail1' is not a mail server IP address"),
    ("\nhello world\n", "line 2: not a `doveadm director map` row"),
    ("user1\t12\t127.0.0.2\n", "line 1: expected 4 tab-separated fields, found 3"),
])
def test_bad_map_lines_are_named(text: str, message: str) -> None:
    with pytest.raises(DirectorOutputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_director_map(text)


# --- import plan ---------------------------------------------------------------------------------

BY_IP = {"10.0.0.2": "b2", "10.0.0.3": "b3"}


def row(user: str, ip: str, line: int = 1) -> MapRow:
    return MapRow(user, user_hash(user), ip, line)


def test_plan_places_each_user_on_its_director_backend() -> None:
    plan = plan_import([row("a@x", "10.0.0.2"), row("b@x", "10.0.0.3"), MapRow("<unknown>", 5, "10.0.0.2", 3),
                        row("c@x", "10.0.0.3")],
                       backends_by_ip=BY_IP, site_view=view("b2 b3"), grouped_users=["c@x"], group_count=4,
                       user_hash=user_hash)
    assert [(p.username, p.group_name, p.backend.host) for p in plan.placements] == [
        ("a@x", director_group_name("b2", "a@x", 4), "b2"), ("b@x", director_group_name("b3", "b@x", 4), "b3")]
    assert (plan.already_grouped, plan.unknown_users, plan.problems) == (("c@x",), 1, ())


def test_plan_places_on_offline_backends_too() -> None:
    """The map is the director's truth: the group starts there and fails over like any group."""
    plan = plan_import([row("a@x", "10.0.0.2")], backends_by_ip=BY_IP, site_view=view("b2:off b3"),
                       grouped_users=[], group_count=4)
    assert [p.backend.host for p in plan.placements] == ["b2"]


@pytest.mark.parametrize(("rows", "message"), [
    ([row("a@x", "10.0.0.9")], "line 1: mail server 10.0.0.9 has no palomar backend in the transition config"),
    ([row("a@x", "10.0.0.3")], "line 1: backend b3 (mail server 10.0.0.3) is not a backend of site east"),
    ([MapRow("a@x", 1, "10.0.0.2", 4)], "line 4: user a@x hashes to"),
    ([row("a@x", "10.0.0.2"), row("a@x", "10.0.0.4", 2)], "line 2: user a@x is listed on two mail servers"),
])
def test_plan_problems_name_the_line(rows: list[MapRow], message: str) -> None:
    by_ip = {**BY_IP, "10.0.0.4": "b4"}
    plan = plan_import(rows, backends_by_ip=by_ip, site_view=view("b2 b4"), grouped_users=[], group_count=4,
                       user_hash=user_hash)
    assert len(plan.problems) == 1 and plan.problems[0].startswith(message)


# --- doveadm director status -> transition file ---------------------------------------------------

# Captured from `doveadm director status` of the Dovecot 2.3.19.1 ring of test_director_hash.py (ring B).
STATUS_TABLE = (
    "mail server ip tag vhosts state state changed       users           \n"
    "127.0.0.2          100    up    -                   0               \n"
    "127.0.0.3          37     up    -                   0               \n"
    "127.0.0.4          100    down  2026-12-04 23:54:57 0               \n"
    "127.0.0.5          3      up    -                   0               \n"
)
STATUS_TAB = (
    "mail server ip\ttag\tvhosts\tstate\tstate changed\tusers\n"
    "127.0.0.2\t\t100\tup\t-\t0\n127.0.0.3\t\t37\tup\t-\t0\n"
    "127.0.0.4\t\t100\tdown\t2026-12-04 23:54:57\t0\n127.0.0.5\t\t3\tup\t-\t0\n"
)
RING_B = (MailHost("127.0.0.2"), MailHost("127.0.0.3", 37), MailHost("127.0.0.4", down=True),
          MailHost("127.0.0.5", 3))


@pytest.mark.parametrize("text", [STATUS_TABLE, STATUS_TAB], ids=["table", "tab"])
def test_status_gives_the_ring(text: str) -> None:
    assert tuple(parse_director_status(text)) == RING_B


def test_rendered_file_loads_as_the_same_ring(tmp_path) -> None:
    path = tmp_path / "transition.conf"
    path.write_text(render_transition(RING_B, {"127.0.0.3": "mail3"}, "%Ln"))
    loaded = load_transition(path)
    assert loaded.ring == DirectorRing(RING_B, "%Ln")
    assert loaded.backends == {"127.0.0.2": "127.0.0.2", "127.0.0.3": "mail3", "127.0.0.4": "127.0.0.4",
                               "127.0.0.5": "127.0.0.5"}


@pytest.mark.parametrize(("text", "message"), [
    ("127.0.0.2 blue 100 up - 0\n", "line 1: mail server 127.0.0.2 has tag 'blue': only the untagged ring"),
    ("127.0.0.2 100 sideways - 0\n", "line 1: expected a vhost count and up/down"),
    ("mail1 100 up - 0\n", "line 1: mail server 'mail1' is not an IP address"),
    ("127.0.0.2\n", "line 1: not a `doveadm director status` row"),
])
def test_bad_status_lines_are_named(text: str, message: str) -> None:
    with pytest.raises(DirectorOutputError) as info:
        parse_director_status(text)
    assert str(info.value).startswith(message)
