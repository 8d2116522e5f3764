"""The registry of every setting palomar knows: name, type, default, roles, meaning.

The loader refuses anything not listed here, so a setting we do not implement can
never be silently ignored. Adding a setting is one `_add(...)` line; the docs test
makes sure docs/configuration.md lists it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from palomar.config.values import (
    ADDRESSES,
    BOOL,
    DECIMAL,
    NETWORKS,
    PATH,
    PERCENT,
    PORT,
    SECRET,
    SIZE,
    STRING,
    TIME,
    UINT,
    WORDS,
    ValueType,
    enum,
)

Role = Literal["proxy", "backend", "both"]
PROXY: Role = "proxy"
BACKEND: Role = "backend"
BOTH: Role = "both"


@dataclass(frozen=True)
class Setting:
    """One setting. `unsupported` is the reason it is recognised but refused."""

    name: str
    type: ValueType
    default: str
    roles: Role
    meaning: str
    extension: bool = False
    unsupported: str | None = None

    @property
    def secret(self) -> bool:
        return self.type.name == "secret"

    def parse(self, text: str) -> Any:
        return self.type.parse(text)

    @property
    def default_value(self) -> Any:
        return self.type.parse(self.default)

    def applies_to(self, role: str | None) -> bool:
        return role is None or self.roles in (BOTH, role)


class Registry(dict[str, Setting]):
    """Settings of one scope (top level, or inside one kind of section), by name, in order."""

    def add(
        self,
        name: str,
        type_: ValueType,
        default: str,
        roles: Role,
        meaning: str,
        *,
        extension: bool = False,
        unsupported: str | None = None,
    ) -> None:
        if name in self:
            raise ValueError(f"setting {name} registered twice")
        self[name] = Setting(name, type_, default, roles, meaning, extension, unsupported)


GLOBAL = Registry()
_add = GLOBAL.add

# --- the seed's cluster settings -------------------------------------------------------------------------
_add("cluster_local_site", STRING, "", BOTH, "this server's site name, as used by `palomar cluster site`")
_add("cluster_backend_name", STRING, "", BACKEND, "this backend's name, as used by `palomar cluster backend`")
_add("cluster_backend_test_username", STRING, "", BOTH,
     "test login used to probe backends; `%{backend_host}` expands to the probed backend; "
     "backends never move this user")
_add("cluster_backend_test_password", SECRET, "", PROXY, "password of the test login")
_add("cluster_proxy_check_backends", BOOL, "yes", PROXY,
     "whether this proxy sets failing backends offline and probes backends with the test login "
     "(every backend once at start-up, offline ones periodically) so the controller can set them online")
_add("cluster_user_move_timeout", TIME, "31 secs", BACKEND,
     "if one user's move has not finished in this time, treat it as done and move the next user")
_add("cluster_default_group_count", UINT, "100", BOTH,
     "number of automatically created user groups default-1 .. default-N")
_add("cluster_director_transition_config", PATH, "", PROXY,
     "file describing the Dovecot 2.3 director ring being replaced (its mail servers, their vhost counts and "
     "palomar backend names, director_username_hash): while set, a user without a group joins "
     "`director-<backend>-N`, a group started on the backend the director hashes the user to "
     "(docs/director-migration.md)")
_add("cluster_geodb", STRING, "", BOTH, "GeoDB dict",
     unsupported="as a value: palomar's GeoDB is set by cassandra_hosts (or cluster_geodb_path); the seed's "
                 "block `cluster_geodb { dict proxy { ... } }` is accepted as written")
_add("cluster_localdb", STRING, "", BOTH, "LocalDB dict",
     unsupported="as a value: palomar uses cluster_localdb_path; the seed's block "
                 "`cluster_localdb { dict proxy { ... } }` is accepted as written")
_add("cassandra_hosts", WORDS, "", BOTH,
     "Cassandra contact points of the GeoDB (host or host:port); setting it selects the Cassandra GeoDB")
_add("lmtp_proxy", enum("yes"), "yes", BOTH,
     "LMTP recipients are proxied to the backend that owns the user: palomar's proxy always does so, and its "
     "backend checks each recipient's owner (a moved user's recipient is referred on); `no` is refused")
_add("auth_socket_path", enum("cluster-userdb"), "cluster-userdb", BOTH,
     "accepted with the seed's value only, as a no-op: in Dovecot Pro it points user lookups at the cluster "
     "service; palomar routes in-process and has no separate auth process or socket")
_add("login_socket_path", enum("cluster"), "cluster", BOTH,
     "accepted with the seed's value only, as a no-op: in Dovecot Pro it points login processes at the cluster "
     "service; palomar's proxy authenticates and routes in-process")

# --- Dovecot settings palomar honours --------------------------------------------------------------------
_add("haproxy_trusted_networks", NETWORKS, "", BOTH,
     "networks allowed to send a HAProxy PROXY header to `haproxy = yes` listeners. On a backend (only with "
     "cluster_backend_path = direct): the proxies' networks, the only ones whose PROXY header the direct "
     "listeners of its Dovecot believe (`palomar backend dovecot-config` writes them; a network covering every "
     "address, such as 0.0.0.0/0, is refused)")
_add("haproxy_timeout", TIME, "3 secs", PROXY, "how long to wait for the PROXY header")
_add("login_trusted_networks", NETWORKS, "", PROXY,
     "networks whose connections may forward the client's address and session (IMAP ID, XCLIENT), e.g. a "
     "webmail server; they are also exempt from login_max_ip_connections and the auth penalty. Backends "
     "trust proxies by cluster_hop_secret instead, so it is refused there")
_add("doveadm_port", PORT, "0", BOTH,
     "TCP port of the doveadm service (0: none), the default port of `service doveadm { inet_listener tcp }`. "
     "On a proxy doveadm clients connect there (`doveadm -S proxy:port -u USER ...`, authenticated with "
     "doveadm_password) and each command for one user runs on that user's backend, reached over the hop "
     "(cluster_hop_port, not this port). On a backend it is the port of the local Dovecot's doveadm "
     "listener on cluster_backend_dovecot_host (`palomar backend dovecot-config` writes it), which runs the "
     "commands proxies forward; 0 there refuses them")
_add("doveadm_ssl", enum("no", "ssl", "starttls"), "no", BOTH,
     "TLS for doveadm proxying. In Dovecot it is how a doveadm server that forwards a command connects to the "
     "user's backend (`ssl`: implicit TLS, `starttls`: STARTTLS after the handshake). A palomar proxy forwards "
     "over the hop, so `ssl` and `starttls` both mean TLS on that leg and need cluster_hop_ssl = yes (refused "
     "without it); `no` leaves the hop as cluster_hop_ssl says. Clients reach a proxy's doveadm listener with "
     "TLS through its `ssl = yes` (implicit TLS) or STARTTLS (offered whenever ssl is not `no`), as "
     "`doveadm -o doveadm_ssl=ssl|starttls` does")
_add("doveadm_api_key", SECRET, "", PROXY,
     "API key of the doveadm HTTP API (`service doveadm { inet_listener http }`): clients send "
     "`Authorization: X-Dovecot-API <base64(key)>`; Basic auth as `doveadm` with doveadm_password works "
     "too. Empty: Basic auth only")
_add("doveadm_password", SECRET, "", BOTH,
     "shared password of doveadm: a proxy's doveadm clients authenticate with it (PLAIN as user `doveadm`; "
     "wrong passwords count towards the auth penalty); a backend uses it with its local Dovecot's doveadm "
     "(forwarded commands, moves, `palomar backend dovecot-config`)")
_add("hostname", STRING, "", BOTH,
     "this server's name: on a proxy in SMTP/LMTP greetings, shutdown lines and proxy_dest_stats rows (empty: "
     "the system host name); on a backend the local Dovecot's `hostname` (LMTP and submission greetings, "
     "Received headers) in `palomar backend dovecot-config` (empty: cluster_backend_name)")
_add("listen", ADDRESSES, "*, ::", BOTH, "addresses listeners bind to unless they set `address`")
_add("ssl", enum("no", "yes", "required"), "yes", PROXY,
     "client TLS: `no`, `yes` (offered), `required` (as `yes`, and no password is taken without TLS on any "
     "protocol even with auth_allow_cleartext = yes, as Dovecot 2.3 does)")
_add("ssl_server_cert_file", PATH, "/etc/dovecot/private/dovecot.pem", PROXY,
     "PEM file with the server certificate chain (default: what Debian's dovecot-core configures)")
_add("ssl_server_key_file", PATH, "/etc/dovecot/private/dovecot.key", PROXY,
     "PEM file with the server's private key (default: what Debian's dovecot-core configures)")
_add("auth_allow_cleartext", BOOL, "no", PROXY, "allow plaintext authentication without TLS")
_add("disable_plaintext_auth", BOOL, "yes", BOTH, "Dovecot 2.3's name of the opposite of auth_allow_cleartext",
     unsupported="the Dovecot 2.3 name; like Dovecot 2.4, palomar does not read 2.3 settings: write "
                 "auth_allow_cleartext with the opposite value (disable_plaintext_auth = no is "
                 "auth_allow_cleartext = yes)")
_add("ssl_cert", STRING, "", BOTH, "Dovecot 2.3's name of ssl_server_cert_file",
     unsupported="the Dovecot 2.3 name: write ssl_server_cert_file = /path (a file name, no `<`)")
_add("ssl_key", STRING, "", BOTH, "Dovecot 2.3's name of ssl_server_key_file",
     unsupported="the Dovecot 2.3 name: write ssl_server_key_file = /path (a file name, no `<`)")
_add("auth_failure_delay", TIME, "2 secs", PROXY,
     "flat delay before answering a failed authentication (the escalating penalty comes on top, "
     "see auth_penalty_max_delay)")
_add("auth_username_format", STRING, "%Lu", PROXY,
     "how user names are normalised before lookup (`%Lu`: lowercased)")
_add("auth_cache_size", SIZE, "0", PROXY,
     "memory for the passdb cache of the `sql` and `ldap` drivers (0: no cache); it keeps the stored "
     "password hash and the fields, never a verdict, so a wrong password is never let in from it")
_add("auth_cache_ttl", TIME, "1 hour", PROXY, "how long a cached passdb answer is used")
_add("auth_cache_negative_ttl", TIME, "1 hour", PROXY,
     "how long an unknown user is cached (0: not at all); also after it a password mismatch asks the database")
_add("recipient_delimiter", STRING, "+", BOTH,
     "characters that separate user and detail in LMTP recipients (`user+detail@domain`): the first of "
     "them in the local part splits it; the user part is looked up and routed, the whole address delivered")
_add("imap_id_log", STRING, "", PROXY,
     "IMAP ID fields of clients to log as `ID sent: ...` (`*`: all; empty: none)")
_add("imap_id_retain", BOOL, "no", PROXY,
     "pass the client's IMAP ID on to the backend's Dovecot (before palomar's own x-session-id etc.)")
_add("imap_capability", STRING, "", PROXY,
     "pre-login IMAP CAPABILITY: empty takes the site's backends' list, `+X Y` adds to it, a list replaces it "
     "(STARTTLS, AUTH= and LOGINDISABLED stay decided by the connection)")
_add("submission_backend_capabilities", WORDS, "", PROXY,
     "which of 8BITMIME BINARYMIME CHUNKING DSN VRFY the pre-login EHLO offers; unset takes the site's "
     "backends' EHLO")
_add("managesieve_sieve_capability", STRING, "", PROXY,
     "ManageSieve greeting's SIEVE list before login (empty: the site's backends' list)")
_add("managesieve_notify_capability", STRING, "", PROXY,
     "ManageSieve greeting's NOTIFY list before login (empty: the site's backends' list)")
_add("login_greeting", STRING, "palomar ready.", PROXY, "greeting sent to clients")
_add("log_path", PATH, "", BOTH, "log file (empty: standard error)")
_add("base_dir", PATH, "/run/palomar", BOTH,
     "directory of runtime files: each running role writes `ROLE.pid` there (as Dovecot's master.pid) and "
     "refuses to start while that file names a live process; a backend's "
     "`palomar backend dovecot-config` puts the local Dovecot's runtime and state directories there")

# --- palomar extensions ----------------------------------------------------------------------------------
_ext = {"extension": True}
_add("cluster_geodb_driver", enum("sqlite", "cassandra"), "sqlite", BOTH,
     "GeoDB engine; unset, it is `cassandra` when cassandra_hosts is set (as in the seed), else `sqlite`", **_ext)
_add("cluster_geodb_path", PATH, "/var/lib/palomar/geodb.sqlite", BOTH,
     "SQLite GeoDB file (driver sqlite)", **_ext)
_add("cluster_geodb_timeout", TIME, "2 secs", BOTH,
     "longest wait for one GeoDB call; a slower answer counts as a failure (well under a client's patience)",
     **_ext)
_add("cluster_geodb_breaker_failures", UINT, "3", BOTH,
     "GeoDB failures in a row after which this process stops waiting on the GeoDB and uses what it last "
     "knew, probing again every cluster_geodb_breaker_retry", **_ext)
_add("cluster_geodb_breaker_retry", TIME, "5 secs", BOTH,
     "while the GeoDB is failing, how often one call probes whether it answers again", **_ext)
_add("cluster_geodb_stale_max", TIME, "1 hour", BOTH,
     "how old cached GeoDB state may be and still route users and prove ownership while the GeoDB is "
     "unavailable (0: never; see docs/design/geodb-outage.md)", **_ext)
_add("cassandra_keyspace", STRING, "cluster", BOTH,
     "Cassandra keyspace of the GeoDB (also accepted as `dict_server { dict cluster-geodb { ... } }`)", **_ext)
_CL = enum("local-quorum", "local-one", "quorum", "each-quorum", "one", "two", "three", "all")
_add("cassandra_port", PORT, "9042", BOTH, "CQL port of contact points given without a port", **_ext)
_add("cassandra_local_dc", STRING, "", BOTH,
     "this site's Cassandra datacenter (empty: the datacenter of the first contact point)", **_ext)
_add("cassandra_replication", WORDS, "", BOTH,
     "replicas per datacenter (`dc1:3 dc2:3`) when palomar creates the keyspace (empty: up to 3 in each)",
     **_ext)
_add("cassandra_write_consistency", _CL, "local-quorum", BOTH, "consistency of GeoDB writes", **_ext)
_add("cassandra_read_consistency", _CL, "local-one", BOTH, "consistency of GeoDB reads", **_ext)
_add("cassandra_serial_consistency", enum("local-serial", "serial"), "local-serial", BOTH,
     "Paxos consistency of GeoDB lightweight transactions (`serial`: cluster-wide)", **_ext)
_add("cluster_localdb_path", PATH, "/dev/shm/palomar/localdb.sqlite", BOTH,
     "this server's LocalDB (SQLite)", **_ext)
_add("cluster_hop_secret", SECRET, "", BOTH,
     "shared secret proxies use to prove themselves to backends (empty: a key derived from doveadm_password, "
     "which the seed sets alike on every proxy and backend)", **_ext)
_add("cluster_hop_port", PORT, "7425", BOTH,
     "port where every backend's palomar service listens for proxies", **_ext)
_add("cluster_hop_ssl", enum("yes", "no"), "yes", BOTH,
     "TLS on the proxy-to-backend hop: `yes` (backends serve cluster_hop_ssl_cert_file, proxies verify it "
     "against cluster_hop_ssl_ca_file and the backend's host) or `no` (plaintext: user names and whole "
     "sessions readable on the hop network); the same on every proxy and backend", **_ext)
_add("cluster_hop_ssl_cert_file", PATH, "", BOTH,
     "PEM certificate chain this backend serves on the hop; it must name the backend's host in the GeoDB "
     "(cluster_backend_name) as a DNS or IP subjectAltName. A proxy with cluster_proxy_site_listen serves it "
     "to other sites' proxies: there it must name the site's load_balancer host", **_ext)
_add("cluster_hop_ssl_key_file", PATH, "", BOTH, "PEM private key of cluster_hop_ssl_cert_file", **_ext)
_add("cluster_hop_ssl_ca_file", PATH, "", BOTH,
     "PEM CA certificate(s) a proxy (and `palomar cluster` admin commands) trusts for backends' hop "
     "certificates; the system's CA store is not used", **_ext)
_add("cluster_hop_connect_timeout", TIME, "2 secs", PROXY,
     "how long a proxy waits for a backend to accept the hop's TCP connection", **_ext)
_add("cluster_hop_answer_timeout", TIME, "4 secs", PROXY,
     "how long a proxy waits for a backend's answer to a hop (ownership check and the Dovecot login); "
     "with cluster_proxy_probe_timeout it bounds how long a login waits for a stalled backend before "
     "failing over", **_ext)
_add("cluster_proxy_site_listen", STRING, "", PROXY,
     "ADDRESS:PORT where this proxy accepts logins other sites' proxies relay to this site (through its "
     "load balancer, whose `site update --load-balancer HOST:PORT` names the port); empty: off. Hops use the "
     "cluster_hop_* secret and TLS settings", **_ext)
_add("cluster_site_probe_interval", TIME, "10 secs", PROXY,
     "time between this proxy's probes of every other site's load balancer (a probe report older than three "
     "intervals is ignored)", **_ext)
_add("cluster_site_unreachable_after", TIME, "1 min", PROXY,
     "this site calls another unreachable (its site_reachability row) once no proxy's probe has reached it and "
     "cluster_site_unreachable_quorum proxies have failed for this long", **_ext)
_add("cluster_site_reachable_after", TIME, "30 secs", PROXY,
     "an unreachable site is reachable again once a proxy's probes have reached it for this long", **_ext)
_add("cluster_site_unreachable_quorum", UINT, "2", PROXY,
     "proxies of this site whose probes must fail (or every probing proxy, if fewer) before another site is "
     "unreachable", **_ext)
_add("cluster_proxy_stats_interval", TIME, "10 secs", PROXY,
     "how often this proxy writes its per-backend session counters to proxy_dest_stats", **_ext)
_add("cluster_proxy_offline_failures", UINT, "3", PROXY,
     "destination failures within cluster_proxy_offline_window that make this proxy set a backend offline "
     "(a failed probe right after a failed session also does)", **_ext)
_add("cluster_proxy_offline_window", TIME, "10 secs", PROXY,
     "how long a destination failure counts towards cluster_proxy_offline_failures", **_ext)
_add("cluster_proxy_probe_interval", TIME, "5 secs", PROXY,
     "how often this proxy probes offline backends with the test login", **_ext)
_add("cluster_proxy_probe_timeout", TIME, "5 secs", PROXY,
     "how long one probe (hop, test login, LOGOUT) may take before it counts as failed", **_ext)
_add("metrics_prefix", STRING, "dovecot_", BOTH,
     "prefix of the metrics exported under Dovecot's names (the Palomar document's and `@metric_defaults = "
     "proxy`: `dovecot_proxy_session_success_total`, ...), as Dovecot's OpenMetrics exporter writes them; "
     "palomar's own metrics are `palomar_*`", **_ext)
_add("login_max_ip_connections", UINT, "100", PROXY,
     "connections from one client address that may be open before login, per proxy process (0: no limit); "
     "the address is the PROXY header's on haproxy listeners; login_trusted_networks and LMTP are exempt; "
     "beyond it a connection is refused at once with the protocol's BYE, -ERR or 421", **_ext)
_add("login_max_auth_failures", UINT, "3", PROXY,
     "failed logins after which a connection is closed with the protocol's BYE, -ERR or 421 (0: never); "
     "Dovecot 2.3 has no such limit (imap-login only counts invalid commands, 3)", **_ext)
_add("auth_penalty_max_delay", TIME, "15 secs", PROXY,
     "longest escalating wait before checking a login from a source address with recent failures: "
     "Dovecot's anvil penalty, 4, 8, then this many seconds (0: no penalty); a source's attempts are also "
     "spaced by this wait, so parallel connections do not multiply its guesses", **_ext)
_add("auth_penalty_per_user", BOOL, "yes", PROXY,
     "also escalate per user name, so that many addresses guessing one account slow down; the account's "
     "owner then waits up to auth_penalty_max_delay per login while it is under attack", **_ext)
_add("auth_penalty_max_sources", UINT, "100000", PROXY,
     "penalty records kept per proxy (addresses, and user names; with worker processes, in the parent's "
     "one table); the least recently used go first, so memory stays bounded whatever the number of sources",
     **_ext)
_add("cluster_lmtp_max_mail_size", SIZE, "50M", PROXY,
     "largest message the proxy's LMTP listener accepts (advertised as SIZE; 0 = no limit)", **_ext)
_add("controller_interval", TIME, "10 secs", BOTH,
     "controller: how often `palomar controller` reads its site's state and runs its features", **_ext)
_add("controller_health_min_probe_successes", UINT, "3", BOTH,
     "controller health: probe successes in a row every reporting proxy needs before an offline "
     "backend goes online", **_ext)
_add("controller_health_quiet_time", TIME, "30 secs", BOTH,
     "controller health: no probe of the backend may have failed within this time", **_ext)
_add("controller_health_min_proxies", UINT, "1", BOTH,
     "controller health: proxies that must have probed the backend successfully since it went offline",
     **_ext)
_add("controller_history_path", PATH, "/var/lib/palomar/controller-history.sqlite", BOTH,
     "controller: SQLite file keeping the load history, the features' recent moves and the group-size plan "
     "across restarts (a restarted controller must not start its warm-up or its rate limits again)", **_ext)
_add("controller_history_samples", UINT, "120", BOTH,
     "controller: load samples kept per backend (120 = 1 hour at the backends' 30 s interval); memory and "
     "file size grow with samples x backends, the balance feature only averages the last few", **_ext)
_add("controller_balance_resources", WORDS,
     "load_cpu_pct load_mem_used_pct load_avg1_per_cpu load_disk_busy_pct dovecot_sessions", BOTH,
     "controller balance: the backend_stats gauges compared between backends, one Z-score each", **_ext)
_add("controller_balance_window", UINT, "10", BOTH,
     "controller balance: newest samples averaged per resource (5 minutes at 30 s), so a spike does not move "
     "a group", **_ext)
_add("controller_balance_min_samples", UINT, "1440", BOTH,
     "controller balance: samples a backend needs before balance counts it (12 hours at 30 s, the vendor's "
     "warm-up); newer backends are filled by failback instead", **_ext)
_add("controller_balance_score_delta", DECIMAL, "2", BOTH,
     "controller balance: the worst and best backends' summed Z-scores must differ by more than this "
     "(in standard deviations) before a group moves", **_ext)
_add("controller_balance_min_spread", PERCENT, "10", BOTH,
     "controller balance: a resource whose standard deviation is below this percentage of its mean counts as "
     "even (Z-scores of nearly equal values are noise)", **_ext)
_add("controller_balance_groups_per_hour", UINT, "1", BOTH,
     "controller balance: groups moved per hour at most (the vendor's default: a move costs the users' caches)",
     **_ext)
_add("controller_balance_min_residence", TIME, "1 hour", BOTH,
     "controller balance: a group stays on its backend at least this long before balance moves it again "
     "(no thrashing)", **_ext)
_add("controller_failback_window", TIME, "1 day", BOTH,
     "controller failback: a backend that went online (came back, or was added) within this time is filled "
     "up to its load-factor share of the groups; after that balance alone moves groups", **_ext)
_add("controller_failback_tolerance", UINT, "1", BOTH,
     "controller failback: groups a backend may be below its share without failback acting (shares are "
     "rarely whole numbers)", **_ext)
_add("controller_failback_groups_per_hour", UINT, "30", BOTH,
     "controller failback: groups moved per hour at most (one every 2 minutes: a returning backend warms its "
     "caches gradually)", **_ext)
_add("controller_failback_min_residence", TIME, "5 mins", BOTH,
     "controller failback: a group stays on its backend at least this long before failback moves it", **_ext)
_add("controller_evacuate_after", TIME, "10 mins", BOTH,
     "controller evacuate: a backend offline this long has its groups moved to others for good (a restart "
     "or a short outage is over sooner, and its groups come back by failback)", **_ext)
_add("controller_evacuate_groups_per_hour", UINT, "600", BOTH,
     "controller evacuate: groups moved per hour at most (10 a minute: the targets take the users' logins "
     "gradually)", **_ext)
_add("controller_group_size_slack", PERCENT, "20", BOTH,
     "controller group-size: groups on one backend may differ from their mean size by this percentage "
     "before users are re-grouped", **_ext)
_add("controller_group_size_max_planned", UINT, "100000", BOTH,
     "controller group-size: users one daily plan (00:00 UTC) re-groups at most", **_ext)
_add("controller_group_size_moves_per_pass", UINT, "1000", BOTH,
     "controller group-size: users re-grouped per execution pass (every 30 minutes) at most", **_ext)
_add("controller_group_size_pass_interval", TIME, "30 mins", BOTH,
     "controller group-size: time between execution passes of the daily plan (the vendor's cadence)", **_ext)
_add("controller_site_failover_after", TIME, "5 mins", BOTH,
     "controller site-failover: a site unreachable from this one this long is failed over (shorter outages "
     "are cheaper to wait out than to move users twice)", **_ext)
_add("controller_site_recover_after", TIME, "5 mins", BOTH,
     "controller site-failover: a failed-over site reachable again this long gets its users back", **_ext)
_add("controller_site_ramp_step", PERCENT, "10", BOTH,
     "controller site-failover: percentage points added to the force-move (or recover) per ramp step, so "
     "the receiving site's caches warm gradually", **_ext)
_add("controller_site_ramp_interval", TIME, "1 min", BOTH,
     "controller site-failover: time between ramp steps", **_ext)
_add("cluster_backend_stats_interval", TIME, "30 secs", BACKEND,
     "how often the backend samples its host and Dovecot load and writes backend_stats (the controller's "
     "sample rate)", **_ext)
_add("controller_http_listen", STRING, "", BOTH,
     "controller: `address:port` (IPv6 as `[address]:port`), space-separated, where the REST API "
     "(/api/v1/) and the web UI (/) are served; empty: not served", **_ext)
_add("controller_http_ssl_cert_file", PATH, "", BOTH,
     "controller: PEM certificate chain for HTTPS on controller_http_listen (empty: plain HTTP, for "
     "loopback or behind a TLS-terminating proxy); needs controller_http_ssl_key_file", **_ext)
_add("controller_http_ssl_key_file", PATH, "", BOTH,
     "controller: PEM private key of controller_http_ssl_cert_file", **_ext)
_add("controller_http_ssl_client_ca_file", PATH, "", BOTH,
     "controller API: PEM CA file; a client certificate it signed whose subject CN is listed in "
     "controller_http_ssl_client_admin_names or _readonly_names authenticates an API request "
     "(mutual TLS, no token needed); needs controller_http_ssl_cert_file", **_ext)
_add("controller_http_ssl_client_admin_names", WORDS, "", BOTH,
     "controller API: subject CNs of client certificates with the admin role", **_ext)
_add("controller_http_ssl_client_readonly_names", WORDS, "", BOTH,
     "controller API: subject CNs of client certificates with the read-only role", **_ext)
_add("controller_http_admin_user", STRING, "admin", BOTH,
     "controller web UI and API: the user name with the admin role (reads and changes)", **_ext)
_add("controller_http_admin_password", SECRET, "", BOTH,
     "controller: the admin's password, plain or `{SCHEME}hash` as in a passwd-file (empty: no admin "
     "login by password)", **_ext)
_add("controller_http_readonly_user", STRING, "viewer", BOTH,
     "controller web UI and API: the user name with the read-only role", **_ext)
_add("controller_http_readonly_password", SECRET, "", BOTH,
     "controller: the read-only user's password, plain or `{SCHEME}hash` (empty: no such login)", **_ext)
_add("controller_http_admin_token", SECRET, "", BOTH,
     "controller API: bearer token with the admin role (empty: none); at least 16 characters", **_ext)
_add("controller_http_readonly_token", SECRET, "", BOTH,
     "controller API: bearer token with the read-only role (empty: none); at least 16 characters", **_ext)
_add("controller_http_auth_max_delay", TIME, "15 secs", BOTH,
     "controller: longest escalating wait before a credential from an address with recent failures is "
     "checked (the proxies' auth penalty: 4, 8, then this; 0: no penalty), so passwords cannot be "
     "guessed at network speed", **_ext)
_add("controller_http_session_lifetime", TIME, "8 hours", BOTH,
     "controller web UI: how long a login session lasts (sessions live in the controller's memory: a "
     "restart logs everyone out)", **_ext)
_add("cluster_backend_dovecot_host", STRING, "127.0.0.1", BACKEND,
     "address of the local Dovecot CE behind this backend", **_ext)
_add("cluster_backend_dovecot_master_user", STRING, "palomar-master", BOTH,
     "Dovecot master user the backend logs users in with (with cluster_backend_path = direct, the proxies "
     "log in to the backends' Dovecot with it themselves)", **_ext)
_add("cluster_backend_dovecot_master_password", SECRET, "", BOTH,
     "password of that master user (empty: a key derived from doveadm_password); the same on every backend "
     "and, with cluster_backend_path = direct, on every proxy", **_ext)
_add("cluster_backend_path", enum("hop", "direct"), "hop", BOTH,
     "how a proxy reaches a user's backend for IMAP and POP3 sessions. `hop`: over the hop to the backend's "
     "palomar service, which checks ownership, logs in to its Dovecot and relays every byte. `direct`: "
     "straight to the backend's Dovecot (cluster_backend_direct_imap_port / _pop3_port, a PROXY v2 header "
     "with the client's address, login as the master user); Dovecot asks the backend's palomar service "
     "(cluster_backend_login_check_socket) at every login, so it still decides every login but leaves the "
     "byte path. Submission and ManageSieve go the same way when cluster_backend_direct_submission_port / "
     "_sieve_port are set (else they stay on the hop); LMTP, doveadm and admin commands stay on the hop. With "
     "cluster_hop_ssl = yes the proxy speaks TLS to Dovecot after the PROXY header and checks the backend's hop "
     "certificate as on the hop; Dovecot's login process then relays the session's bytes in 4 KiB TLS records, "
     "which bounds a large FETCH at Dovecot's own TLS speed (below the hop's). `palomar backend dovecot-config` writes a backend's Dovecot side of it "
     "(docs/design/login-path-cost.md)",
     **_ext)
_add("cluster_backend_direct_imap_port", PORT, "0", BOTH,
     "with cluster_backend_path = direct: the port of the backends' Dovecot IMAP listener with `haproxy = yes` "
     "(the same on every backend; on a backend, `palomar backend dovecot-config` opens it)", **_ext)
_add("cluster_backend_direct_pop3_port", PORT, "0", BOTH,
     "with cluster_backend_path = direct: the port of the backends' Dovecot POP3 listener with `haproxy = yes` "
     "(the same on every backend; on a backend, `palomar backend dovecot-config` opens it)", **_ext)
_add("cluster_backend_direct_submission_port", PORT, "0", BOTH,
     "with cluster_backend_path = direct: the port of the backends' Dovecot Submission listener with "
     "`haproxy = yes` (the same on every backend; 0: Submission sessions stay on the hop)", **_ext)
_add("cluster_backend_direct_sieve_port", PORT, "0", BOTH,
     "with cluster_backend_path = direct: the port of the backends' Dovecot ManageSieve listener with "
     "`haproxy = yes` (the same on every backend; 0: ManageSieve sessions stay on the hop)", **_ext)
_add("cluster_backend_direct_listen", STRING, "", BACKEND,
     "with cluster_backend_path = direct: the address the direct listeners (IMAP, POP3, Submission, "
     "ManageSieve) of the local Dovecot bind to, one the proxies reach (empty: cluster_backend_dovecot_host, a loopback address, which only "
     "proxies on the same host reach); the rest of that Dovecot stays on cluster_backend_dovecot_host",
     **_ext)
_add("cluster_backend_login_check_socket", PATH, "", BACKEND,
     "with cluster_backend_path = direct: the UNIX socket where the backend answers its Dovecot's dict passdb "
     "and userdb lookups (`uri = proxy:<this path>:palomar`, `password_key = passdb/%{session}`, "
     "`user_key = userdb/%{session}`): its ownership check at login, the move fence when the session starts",
     **_ext)
_add("cluster_backend_dovecot_imap_port", PORT, "10143", BACKEND, "IMAP port of the local Dovecot", **_ext)
_add("cluster_backend_dovecot_pop3_port", PORT, "10110", BACKEND, "POP3 port of the local Dovecot", **_ext)
_add("cluster_backend_dovecot_lmtp_port", PORT, "10024", BACKEND, "LMTP port of the local Dovecot", **_ext)
_add("cluster_backend_dovecot_submission_port", PORT, "10587", BACKEND,
     "Submission port of the local Dovecot", **_ext)
_add("cluster_backend_dovecot_sieve_port", PORT, "14190", BACKEND,
     "ManageSieve port of the local Dovecot", **_ext)
_add("cluster_backend_dovecot_doveadm_http_port", PORT, "18080", BACKEND,
     "doveadm HTTP API port of the local Dovecot", **_ext)

# --- sections --------------------------------------------------------------------------------------------
_RESULT = enum("return-ok", "return", "return-fail", "continue", "continue-ok", "continue-fail")

PASSDB = Registry()
PASSDB.add("driver", STRING, "", BOTH, "passdb driver: `passwd-file`, `static`, `sql` or `ldap` (required)")
PASSDB.add("args", STRING, "", BOTH,
           "driver arguments: the passwd-file path, or the `dovecot-sql.conf.ext` / `dovecot-ldap.conf.ext` file")
PASSDB.add("master", BOOL, "no", BOTH, "a master passdb: log in as another user")
PASSDB.add("result_success", _RESULT, "return-ok", BOTH, "what to do when the user authenticates")
PASSDB.add("result_failure", _RESULT, "continue", BOTH, "what to do when authentication fails")
PASSDB.add("result_internalfail", _RESULT, "continue", BOTH, "what to do when the passdb fails")
PASSDB.add("skip", enum("never", "authenticated", "unauthenticated"), "never", BOTH,
           "when to skip this passdb")

# Field sections of passdb: `fields { key = value }`; any key is allowed.
FIELD_SECTIONS = ("fields", "default_fields", "override_fields")

SERVICE = Registry()
SERVICE.add("process_min_avail", UINT, "0", BOTH,
            "on a proxy's login services: worker processes started ahead; palomar starts the largest "
            "process_min_avail or process_limit of its login services, all at start, each serving every "
            "listener (docs/design/proxy-workers.md). Refused on other services and on a backend")
SERVICE.add("process_limit", UINT, "1", BOTH,
            "on a proxy's login services: worker processes (see process_min_avail; 1 = one process, no "
            "parent). Dovecot's default is 100 processes grown on demand; palomar's workers are all started "
            "ahead, at most 64. Refused on other services and on a backend")
SERVICE.add("client_limit", UINT, "10000", BOTH,
            "connections of this service one proxy process holds, pre-login and relayed (0: no limit); "
            "beyond it a connection is refused at once with Dovecot's `Connection queue full`. "
            "Per worker process, as in Dovecot (Dovecot's default is 1000 per process over up to 100 "
            "processes). Only enforced on a proxy: on a backend anything but the default is refused")

INET_LISTENER = Registry()
INET_LISTENER.add("port", PORT, "0", BOTH, "TCP port (0 disables the listener)")
INET_LISTENER.add("address", ADDRESSES, "", BOTH, "addresses to bind (empty: `listen`)")
INET_LISTENER.add("haproxy", BOOL, "no", BOTH,
                  "expect a HAProxy PROXY header (only from `haproxy_trusted_networks`)")
INET_LISTENER.add("ssl", BOOL, "no", BOTH, "TLS from the first byte (imaps, pop3s, submissions)")

# Sections Dovecot has that palomar recognises and refuses, with the reason (the loader's message and
# the reference's table).
REFUSED_SECTIONS = {
    "userdb": "not used: a proxy needs only a passdb (the user's backend looks the user up in its own "
              "Dovecot), and a backend's Dovecot gets its userdb from `palomar backend dovecot-config`; "
              "remove the userdb section",
    "unix_listener": "not supported: palomar has no Dovecot auth or login processes to serve on unix sockets, "
                     "so no socket would be created (only the Palomar document's own `service cluster` "
                     "listeners are accepted, as a documented no-op); remove it",
}

SERVICE_NAMES = (
    "imap-login", "pop3-login", "submission-login", "managesieve-login", "lmtp", "doveadm", "stats", "cluster",
)

# Dovecot's default inet listeners: service -> (listener name, port, implicit TLS).
DEFAULT_LISTENERS: dict[str, tuple[tuple[str, int, bool], ...]] = {
    "imap-login": (("imap", 143, False), ("imaps", 993, True)),
    "pop3-login": (("pop3", 110, False), ("pop3s", 995, True)),
    "submission-login": (("submission", 587, False), ("submissions", 465, True)),
    "managesieve-login": (("sieve", 4190, False),),
    "lmtp": (("lmtp", 24, False),),
}
# `doveadm { inet_listener tcp }` takes its port from doveadm_port.
DOVEADM_LISTENER = "tcp"
# As in Dovecot, the doveadm listener named `http` serves the HTTP API; any other name the TCP protocol.
DOVEADM_HTTP_LISTENER = "http"

GROUPS = {"cluster_defaults": ("proxy", "backend"), "metric_defaults": ("proxy", "backend")}
