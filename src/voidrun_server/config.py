"""One settings object for the whole server.

Every field is read from the environment with the ``VOIDRUN_`` prefix (``VOIDRUN_PORT=9000``), or
from a ``.env`` file in the working directory. The object is built once at start-up and passed
explicitly to whatever needs it; nothing reads the environment behind its back.
"""

from __future__ import annotations

import ipaddress
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import ids


class StatusDialect(StrEnum):
    """How lifecycle states are named in responses (CONTRACT decision 1)."""

    AUTO = "auto"
    SEED = "seed"
    SDK = "sdk"


# host[:port] or [v6][:port], as in an image reference (images/reference.py parses it fully)
_REGISTRY_ENTRY = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _default_data_dir() -> Path:
    return Path("/var/lib/voidrun") if os.geteuid() == 0 else Path("~/.voidrun")


def _default_claims_dir() -> Path:
    return Path("/run/voidrun/claims") if os.geteuid() == 0 else Path("~/.voidrun/claims")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOIDRUN_",
        env_file=".env",
        extra="ignore",
        validate_default=True,
        # Errors are printed at start-up; never echo a rejected key or a database password.
        hide_input_in_errors=True,
    )

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(8080, description="HTTP port.")
    data_dir: Path = Field(
        default_factory=lambda: _default_data_dir(),
        description=(
            "Where the database, images, sandbox disks and the bootstrap key live. Default "
            "~/.voidrun, or /var/lib/voidrun for root (sandboxes run as an unprivileged uid that "
            "must be able to reach their disks, and /root is private)."
        ),
    )
    database_url: str = Field(
        "",
        description=(
            "SQLAlchemy async URL. Empty means SQLite at <data_dir>/voidrun.db; use "
            "postgresql+asyncpg://user:pass@host/db to share one database between nodes."
        ),
    )
    bootstrap_api_key: SecretStr | None = Field(
        None,
        description=(
            "If set, this key is created (org 'default', user 'admin') on start when it does not "
            "exist yet, unless it was revoked (a revoked key is never revived). It must look "
            "random: 'vr_' + at least 32 base64url characters, at least 16 of them different; "
            'make one with python3 -c \'import secrets; print("vr_" + '
            "secrets.token_urlsafe(32))'. If unset and the database has no org, a key is "
            "generated, printed once and written to <data_dir>/bootstrap-key (mode 0600)."
        ),
    )
    status_dialect: StatusDialect = Field(
        StatusDialect.AUTO,
        description=(
            "auto: report paused/stopped as 'snapshotted' to the official Python SDK (User-Agent "
            "VoidRun-Python-SDK/...), seed names to everyone else; seed: always seed names; "
            "sdk: always SDK names."
        ),
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    max_json_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        2 * 1024 * 1024,
        description="Largest JSON request body accepted; larger bodies get 413.",
    )
    max_url_bytes: Annotated[int, Field(ge=256)] = Field(
        16 * 1024, description="Longest request target (path + query) accepted; longer get 414."
    )
    max_request_head_bytes: Annotated[int, Field(ge=4096)] = Field(
        64 * 1024,
        description=(
            "Most bytes of request line plus headers; the server stops reading there and answers "
            "431 (414 when the request line alone is longer), then closes the connection."
        ),
    )
    request_head_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        10.0,
        description=(
            "A connection must deliver a complete request line and headers this soon after it "
            "opens or after a request's first byte, or it gets 408 and is closed (slow clients). "
            "Bodies, responses, SSE and WebSockets are not limited by it."
        ),
    )
    keep_alive_timeout_seconds: Annotated[int, Field(ge=1)] = Field(
        5, description="An idle keep-alive connection is closed after this many seconds."
    )
    max_connections: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description=(
            "Most open client connections (WebSockets and idle keep-alive included); one more "
            "is answered 503 and closed at once. Unset: half the open-file limit (which the "
            "server raises to its hard limit on start), at most 16384."
        ),
    )
    key_touch_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        30.0,
        description=(
            "An API key's lastUsedAt is refreshed at most this often, so authentication does not "
            "write to the database on every request."
        ),
    )
    key_cache_size: Annotated[int, Field(ge=0)] = Field(
        10_000,
        description=(
            "Most authenticated API keys remembered in memory (least recently used first out), "
            "so a known key needs no database query; revocation still applies to the very next "
            "request (a per-request read of a revocation counter). 0 turns the cache off."
        ),
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    e2b_enabled: bool = Field(
        True,
        description=(
            "Serve the E2B API at /e2b (control plane and in-sandbox envd), for the E2B SDKs "
            "unchanged (docs/e2b.md)."
        ),
    )
    cors_origins: list[str] = Field(
        ["*"], description="Origins allowed by CORS (the reference server allows all)."
    )
    mcp_enabled: bool = Field(
        True,
        description=(
            "Serve the MCP server (streamable HTTP, docs/mcp.md) at /mcp and /api/mcp; false: "
            "those paths answer 404."
        ),
    )
    mcp_allowed_hosts: list[str] = Field(
        [],
        description=(
            "Host header values /mcp accepts besides the server's own names (DNS-rebinding "
            "protection, docs/mcp.md): the bind address and localhost at VOIDRUN_PORT, the host "
            "of VOIDRUN_PUBLIC_BASE_URL and VOIDRUN_PUBLIC_DOMAIN. JSON list of host, host:port "
            'or host:* (any port), e.g. ["sandbox.internal:8080"].'
        ),
    )

    dashboard_enabled: bool = Field(
        True, description="Serve the web dashboard (docs/dashboard.md) at / and /ui/."
    )
    dashboard_dir: Path | None = Field(
        None,
        description=(
            "Where the dashboard's files are: its pages (ui/) and node_modules/ with the "
            "third-party assets `npm ci` installs there. Empty: the checkout's dashboard/ dir."
        ),
    )
    session_ttl_seconds: Annotated[float, Field(gt=0)] = Field(
        12 * 3600.0,
        description=(
            "How long a dashboard session (POST /api/auth/session) lasts after sign-in; "
            "revoking its API key ends it at once."
        ),
    )
    images_dir: Path | None = Field(
        None,
        description="Where built images live (default <data_dir>/images); data dirs may share one.",
    )
    agent_runtime_dir: Path | None = Field(
        None,
        description=(
            "Where the agent's own interpreter is bundled, to be mounted read-only into every "
            "sandbox (default <images_dir>/.agent-runtime; data dirs may share one)."
        ),
    )
    agent_zygote: bool = Field(
        True,
        description=(
            "Fork each sandbox's agent from one warm interpreter that joins the sandbox's "
            "namespaces (fast: no interpreter start per sandbox, memory shared copy-on-write); "
            "false starts a fresh interpreter inside every sandbox instead."
        ),
    )
    image_import_dirs: list[Path] = Field(
        [],
        description=(
            "Host directories POST /api/images may import from (JSON list); a path outside "
            "them (after resolving symlinks) is refused with 403. Empty means <data_dir>/imports."
        ),
    )
    image_max_bytes: Annotated[int, Field(ge=1024 * 1024)] = Field(
        10 * 2**30,
        description=(
            "Most bytes an imported image may expand to (files plus 512 per entry); counted "
            "while unpacking, so a decompression bomb stops there."
        ),
    )
    image_max_layers: Annotated[int, Field(ge=1, le=1000)] = Field(
        128, description="Most layers an imported image may have."
    )
    image_setuid: Literal["strip", "reject"] = Field(
        "strip",
        description=(
            "Setuid/setgid files in an imported image: strip the bits (the build logs which "
            "files) or reject fails the build."
        ),
    )
    image_build_concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        2, description="Image imports that unpack at the same time; more wait their turn."
    )
    driver: str = Field(
        "namespace",
        description=(
            "The default isolation: the driver of sandboxes created without `isolation` "
            "(namespace, gvisor or microvm; docs/isolation.md). Must be one of "
            "VOIDRUN_ISOLATIONS."
        ),
    )
    isolations: list[str] = Field(
        ["namespace", "gvisor", "microvm"],
        description=(
            "The isolations (drivers) this server offers, JSON list. Each one that cannot run "
            "on this host is left out with its reason (GET /api/health says which and what to "
            "install); a create asking for it is a 400 naming what is missing."
        ),
    )
    default_image: str = Field("code", description="Image used when a create request names none.")
    debian_mirror: str = Field(
        "",
        description=(
            "Debian mirror used to build images; empty means the one the host's own apt "
            "sources use for the image's suite."
        ),
    )
    image_insecure_registries: list[str] = Field(
        [],
        description=(
            "Registries an image pull may reach although they are on loopback or private "
            "addresses, and the only ones a pull's insecure flag (plain HTTP, unverified TLS) is "
            'honoured for. JSON list of host or host:port ([v6]:port), e.g. ["10.0.0.5:5000"]; '
            "a host without a port matches every port. Empty: public registries over verified "
            "HTTPS only."
        ),
    )
    sandbox_disk_mb: Annotated[int, Field(ge=64)] = Field(
        5120, description="Size of each sandbox's writable disk in MiB (kernel-enforced)."
    )
    sandbox_pids_max: Annotated[int, Field(ge=16)] = Field(
        1024, description="Most processes/threads one sandbox may hold (fork bombs stop here)."
    )
    sandbox_uid_base: Annotated[int, Field(ge=65536, le=2**32 - 2 * 65536)] = Field(
        0x70000000,
        description=(
            "Start of the host uid area sandboxes get their own 65536-id ranges from "
            "(0x70000000: the block systemd leaves unused). Ranges in /etc/subuid and "
            "/etc/subgid, and the image range 100000-165535, are skipped."
        ),
    )
    sandbox_uid_ranges: Annotated[int, Field(ge=1, le=65535)] = Field(
        4094,
        description=(
            "How many sandbox uid ranges the area holds, i.e. the most sandboxes (running or "
            "stopped) one node keeps; 4094 ends just below systemd's foreign uid range."
        ),
    )
    cgroup_parent: str = Field(
        "voidrun",
        description=(
            "Name of the cgroup that holds this server's namespace sandboxes, at the root of "
            "each hierarchy; the gvisor and microvm drivers use <name>-gvisor and "
            "<name>-microvm. Servers on one host need different names (docs/scale-out.md)."
        ),
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$",
    )
    host_claims_dir: Path = Field(
        default_factory=lambda: _default_claims_dir(),
        description=(
            "Host-wide directory where each server records its uid area, subnet and cgroup "
            "names at start (one locked file each); a server whose settings overlap a live "
            "server's refuses to start naming both. Every server on a host must use the same "
            "one (in Kubernetes: a hostPath). Default /run/voidrun/claims, or "
            "~/.voidrun/claims when not root."
        ),
    )
    sandbox_network: bool = Field(
        True,
        description=(
            "Wire each sandbox to the host's uplink under an egress policy (docs/network.md; "
            "needs nftables and dnsmasq). False: sandboxes are loopback-only."
        ),
    )
    sandbox_subnet: ipaddress.IPv4Network = Field(
        ipaddress.IPv4Network("10.213.0.0/16"),
        description=(
            "Sandbox addresses come from here (the first is the gateway and resolver). Must not "
            "overlap any route of the host: the server refuses to start otherwise."
        ),
    )
    sandbox_internet_default: bool = Field(
        True,
        description="allowInternetAccess of sandboxes created without a network policy.",
    )
    sandbox_allowed_private_cidrs: list[ipaddress.IPv4Network] = Field(
        [],
        description=(
            "Private ranges (RFC 1918, 100.64.0.0/10) sandboxes may reach; all are refused "
            'by default. JSON list, e.g. ["10.20.0.0/16"].'
        ),
    )
    sandbox_dns_upstreams: list[str] = Field(
        [],
        description=(
            "Servers the sandboxes' resolver forwards to, in dnsmasq --server syntax (ip, "
            "ip#port, /domain/ip); empty: the host's nameservers from /etc/resolv.conf."
        ),
    )
    sandbox_bandwidth_mbit: Annotated[int, Field(ge=0)] = Field(
        0, description="Per-sandbox bandwidth cap in Mbit/s, each direction (tc); 0: none."
    )
    sandbox_ca_bundle: Path | None = Field(
        Path("/etc/ssl/certs/ca-certificates.crt"),
        description=(
            "PEM bundle every sandbox trusts: mounted read-only over the image's "
            "/etc/ssl/certs/ca-certificates.crt and named by SSL_CERT_FILE, REQUESTS_CA_BUNDLE, "
            "PIP_CERT and NODE_EXTRA_CA_CERTS. Default the host's own bundle; empty: the image's."
        ),
    )
    sandbox_ready_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        30.0, description="How long create/start waits for the sandbox agent to answer."
    )
    warm_pool_size: Annotated[int, Field(ge=0, le=64)] = Field(
        2,
        description=(
            "Sandboxes of the default image kept started ahead of time and handed out on create "
            "(rename, resize and environment instead of a boot). Each idle one costs what an "
            "idle sandbox costs (docs/benchmarks.md, Density). 0 turns the pool off."
        ),
    )
    warm_pool_sizes: dict[str, Annotated[int, Field(ge=0, le=64)]] = Field(
        {},
        description=(
            'Warm pool size per isolation, JSON object, e.g. {"gvisor": 1}; an isolation not '
            "named gets VOIDRUN_WARM_POOL_SIZE if it is the default, else no pool."
        ),
    )
    warm_pool_min_free_memory_mb: Annotated[int, Field(ge=0)] = Field(
        1024,
        description=(
            "The warm pool refills only while the host has at least this much available memory "
            "(MemAvailable), and never while a caller's create is in flight."
        ),
    )
    org_max_sandboxes: Annotated[int, Field(ge=0)] = Field(
        100,
        description=(
            "Default quota: most sandboxes one org may hold (every sandbox not deleted counts). "
            "Per-org override: voidrun-server orgs quota <org> --max-sandboxes N."
        ),
    )
    org_max_cpu: Annotated[int, Field(ge=0)] = Field(
        64,
        description=(
            "Default quota: total CPUs of an org's running and paused sandboxes (a sandbox "
            "still booting counts as running). Override: orgs quota <org> --cpu N."
        ),
    )
    org_max_mem_mb: Annotated[int, Field(ge=0)] = Field(
        128 * 1024,
        description=(
            "Default quota: total memory in MiB of an org's running and paused sandboxes. "
            "Override: orgs quota <org> --mem-mb N."
        ),
    )
    org_max_disk_mb: Annotated[int, Field(ge=0)] = Field(
        500 * 1024,
        description=(
            "Default quota: total disk in MiB of an org's sandboxes that are not deleted "
            "(a stopped sandbox keeps its disk). Override: orgs quota <org> --disk-mb N."
        ),
    )
    min_free_disk_mb: Annotated[int, Field(ge=0)] = Field(
        1024,
        description=(
            "Free space (MiB) always left on the filesystem of the data dir. A create is "
            "refused with 507 when free space minus the unwritten part of every sandbox disk "
            "(they are sparse) minus the new disk would fall below it; uploads get 507 when "
            "free space is already below it. 0 turns the check off."
        ),
    )
    auto_sleep_check_interval_seconds: Annotated[float, Field(gt=0)] = Field(
        30.0, description="How often idle sandboxes are checked for auto-sleep."
    )
    pause_after_idle_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0,
        description=(
            "A running sandbox with autoSleep and no data-plane call for this long is paused."
        ),
    )
    stop_after_paused_seconds: Annotated[float, Field(gt=0)] = Field(
        1800.0, description="A paused sandbox is stopped (processes ended, disk kept) after this."
    )
    delete_after_stopped_seconds: Annotated[float, Field(gt=0)] = Field(
        7 * 86400.0, description="A stopped sandbox is deleted (disk removed) after this."
    )
    exec_output_cap_bytes: Annotated[int, Field(ge=1024)] = Field(
        16 * 1024 * 1024,
        description=(
            "Most bytes of stdout (and of stderr) kept per synchronous exec; the rest is "
            "dropped and flagged with stdoutTruncated/stderrTruncated."
        ),
    )
    command_follow_limit_seconds: Annotated[float, Field(gt=0)] = Field(
        3600.0,
        description=(
            "Longest time one commands/wait call or commands/attach stream follows a command; "
            "then wait answers 504 and attach ends with an error event (call again to go on)."
        ),
    )
    public_domain: str = Field(
        "",
        description=(
            "Domain for preview hosts: a request whose Host is {port}-{sandbox id}.<domain> goes "
            "to that port in the sandbox (one wildcard DNS entry serves all). Empty: previews "
            "only at /api/sandboxes/{id}/ports/{port}/ on the API's own host."
        ),
    )
    public_base_url: str = Field(
        "",
        description=(
            "The server's external URL (scheme, host, port; e.g. https://sandbox.example.com "
            "behind a TLS proxy), used for the URLs /sandboxes/{id}/public-urls reports. Empty: "
            "http://<host>:<port> of the bind address (127.0.0.1 when bound to all addresses)."
        ),
    )
    public_url_template: str = Field(
        "",
        description=(
            "Overrides the URLs /sandboxes/{id}/public-urls reports, for an operator's own "
            "proxy; placeholders {id}, {short_id}, {port}, {name}. Empty: the built-in proxy's "
            "URLs (the preview host when VOIDRUN_PUBLIC_DOMAIN is set, else the path form)."
        ),
    )
    proxy_connect_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        5.0,
        description="How long a proxied request waits for a connection to the sandbox's port.",
    )
    proxy_response_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        60.0,
        description=(
            "How long a proxied request waits for the response head (or a WebSocket for its "
            "handshake) once the request is sent; then 504. The body is not timed as a whole "
            "(streams and long downloads go on while bytes move): see the idle timeout."
        ),
    )
    proxy_idle_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0,
        description=(
            "A proxied HTTP body that moves no byte for this long is cut off: a server in the "
            "sandbox that stops sending mid-body, a client that stops reading the response, or "
            "one that stops sending its request body (then 408). WebSockets are not timed."
        ),
    )
    proxy_through_agent: bool = Field(
        False,
        description=(
            "Reach every sandbox's ports through its agent (port.connect), even where the "
            "driver can open them itself (namespace: setns). Sandboxes of drivers without that "
            "(gvisor, microvm) always go through their agent. For measuring the relay."
        ),
    )
    proxy_max_connections_per_sandbox: Annotated[int, Field(ge=1)] = Field(
        256,
        description=(
            "Most proxied requests and WebSockets open at once to one sandbox; one more gets 429."
        ),
    )
    proxy_max_connections_per_org: Annotated[int, Field(ge=1)] = Field(
        1024,
        description=(
            "Most proxied requests and WebSockets open at once to all of an org's sandboxes; one "
            "more gets 429."
        ),
    )
    proxy_max_connections: Annotated[int, Field(ge=1)] = Field(
        4096,
        description=(
            "Most proxied requests and WebSockets open at once on this server, all orgs "
            "together (each holds a socket to the client and one into a sandbox); one more gets "
            "503."
        ),
    )

    # -- microvm driver --
    microvm_accelerator: Literal["auto", "kvm", "tcg"] = Field(
        "auto",
        description=(
            "How microvm guests run: kvm, tcg (QEMU's emulator: slower, not a QEMU security "
            "boundary) or auto: kvm only when /dev/kvm boots the guest kernel within "
            "VOIDRUN_MICROVM_PROBE_TIMEOUT_SECONDS (probed once, cached), else tcg."
        ),
    )
    microvm_kernel_package: str = Field(
        "linux-image-cloud-amd64",
        description=(
            "Debian package the guest kernel comes from (apt-get download on first use, from "
            "the host's apt sources, unpacked under <data dir>/microvm/assets)."
        ),
    )
    microvm_probe_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        20.0, description="How long the KVM probe may take to boot the guest kernel."
    )
    microvm_boot_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        90.0, description="Most time from starting QEMU to the guest agent's answer."
    )
    microvm_image_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        900.0,
        description=(
            "Most time to turn an image into its read-only ext4 disk (once per image, on the "
            "first microvm sandbox of that image)."
        ),
    )
    microvm_qemu_overhead_mb: Annotated[int, Field(ge=64)] = Field(
        256,
        description=(
            "Memory a VM's QEMU may use beyond the guest's RAM (its cgroup limit is the "
            "sandbox's memory plus this): device state, TCG's translation cache."
        ),
    )
    microvm_cache_dir: Path | None = Field(
        None,
        description=(
            "Where the microvm driver keeps what its VMs share (guest kernel, initramfs, the "
            "images' and the agent's read-only disks); default <data dir>/microvm/cache. "
            "Servers on one host may share one."
        ),
    )
    microvm_clones: bool = Field(
        True,
        description=(
            "Create microvm sandboxes by cloning a snapshot template of their shape (image, "
            "cpu, memory, disk; built by the first create of that shape) instead of a cold "
            "boot each (docs/microvm.md)."
        ),
    )
    microvm_tcg_tb_mb: Annotated[int, Field(ge=8, le=1024)] = Field(
        32,
        description=(
            "Size of TCG's translation cache per VM in MiB (tcg only): most of an idle VM's "
            "own memory; smaller saves memory, but CPU-heavy guests retranslate more often."
        ),
    )

    # -- fleet (docs/scale-out.md) --
    role: Literal["all", "api"] = Field(
        "all",
        description=(
            "`serve` as today (all: API and sandboxes in one process) or as an API replica "
            "(api: no drivers; sandboxes are placed on node daemons registered in the shared "
            "PostgreSQL database and reached through their internal API)."
        ),
    )
    node_id: str = Field(
        "",
        description=(
            "`voidrun-server node`: this node's id in the nodes table (lowercase letters, "
            "digits and dashes, at most 40); empty: the host name."
        ),
    )
    node_url: str = Field(
        "",
        description=(
            "`voidrun-server node`: its internal URL as API replicas should call it; empty: "
            "http://VOIDRUN_HOST:VOIDRUN_PORT."
        ),
    )
    node_token: SecretStr | None = Field(
        None,
        description=(
            "Shared secret between API replicas and node daemons (internal API header and "
            "tunnel hello). Required for `node` and for `serve` with VOIDRUN_ROLE=api."
        ),
    )
    node_tunnel_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        0,
        description=(
            "TCP port of the node's tunnel listener (agent connections and port previews of "
            "its sandboxes); 0: VOIDRUN_PORT + 1."
        ),
    )
    node_tunnel_host: str = Field(
        "",
        description="Address API replicas reach the tunnel at; empty: the host of the node URL.",
    )
    node_labels: dict[str, str] = Field(
        {},
        description='Labels of this node, JSON (e.g. {"region": "eu"}); `region` is matched.',
    )
    node_max_sandboxes: Annotated[int, Field(ge=1)] = Field(
        1000, description="Most sandboxes the API replicas place on this node."
    )
    node_cpu: Annotated[int, Field(ge=0)] = Field(
        0,
        description=(
            "CPU cores placements may commit on this node (a sandbox's cpu is a quota, idle "
            "ones use none); 0: the host's count x 32."
        ),
    )
    node_mem_mb: Annotated[int, Field(ge=0)] = Field(
        0,
        description=(
            "Memory (MiB) placements may commit on this node (a limit, not a reservation); "
            "0: the host's memory x 8."
        ),
    )
    node_heartbeat_seconds: Annotated[float, Field(gt=0)] = Field(
        5.0, description="How often a node writes its heartbeat."
    )
    node_suspect_after_misses: Annotated[int, Field(ge=1)] = Field(
        3, description="Missed heartbeats after which a node is suspect (no placements, 503s)."
    )
    node_lost_after_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0,
        description="Seconds without a heartbeat after which a node is lost (sandboxes error).",
    )
    node_image_copy_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        1800.0,
        description=(
            "How long a create may wait while its image is copied to the node it is placed on "
            "from a node that holds it (the image's first sandbox on that node)."
        ),
    )
    emit_node_id: bool = Field(
        False,
        description=(
            "Emit `nodeId` in Sandbox JSON and route requests whose Host starts with "
            "`<nodeId>-` (needs wildcard DNS; the official SDK then calls that host)."
        ),
    )

    @field_validator("bootstrap_api_key")
    @classmethod
    def _strong_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            problem = ids.configured_key_problem(value.get_secret_value())
            if problem:
                raise ValueError(
                    f"VOIDRUN_BOOTSTRAP_API_KEY is too weak: {problem}; {ids.GENERATE_KEY_HINT}"
                )
        return value

    @field_validator("image_insecure_registries")
    @classmethod
    def _registry_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _REGISTRY_ENTRY.fullmatch(entry):
                raise ValueError(
                    f"VOIDRUN_IMAGE_INSECURE_REGISTRIES entry {entry!r} is not host, host:port "
                    "or [v6]:port (no scheme, no path)"
                )
        return [entry.lower() for entry in value]

    @field_validator("sandbox_ca_bundle", mode="before")
    @classmethod
    def _no_bundle(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _default_isolation_offered(self) -> Settings:
        names = list(dict.fromkeys(self.isolations))
        if self.driver not in names:
            raise ValueError(
                f"VOIDRUN_DRIVER={self.driver!r} is not in VOIDRUN_ISOLATIONS={names}: "
                "the default isolation must be one the server offers"
            )
        unknown = set(self.warm_pool_sizes) - set(names)
        if unknown:
            raise ValueError(
                f"VOIDRUN_WARM_POOL_SIZES names isolations the server does not offer: "
                f"{sorted(unknown)}"
            )
        self.isolations = names
        return self

    def warm_pool_size_for(self, isolation: str) -> int:
        default = self.warm_pool_size if isolation == self.driver else 0
        return self.warm_pool_sizes.get(isolation, default)

    @field_validator("data_dir", "host_claims_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _default_images_dir(self) -> Settings:
        if self.images_dir is None:
            self.images_dir = self.data_dir / "images"
        else:
            self.images_dir = self.images_dir.expanduser().absolute()
        if not self.image_import_dirs:
            self.image_import_dirs = [self.data_dir / "imports"]
        if self.agent_runtime_dir is None:
            self.agent_runtime_dir = self.images_dir / ".agent-runtime"
        else:
            self.agent_runtime_dir = self.agent_runtime_dir.expanduser().absolute()
        return self

    @property
    def images_root(self) -> Path:
        assert self.images_dir is not None  # filled in by the validator
        return self.images_dir

    @property
    def runtime_root(self) -> Path:
        assert self.agent_runtime_dir is not None  # filled in by the validator
        return self.agent_runtime_dir

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'voidrun.db'}"

    @property
    def dashboard_root(self) -> Path:
        """``dashboard_dir``, or ``dashboard/`` of the checkout this package runs from."""
        if self.dashboard_dir is not None:
            return self.dashboard_dir
        return Path(__file__).resolve().parents[2] / "dashboard"

    @property
    def node_token_value(self) -> str:
        return self.node_token.get_secret_value() if self.node_token else ""

    @property
    def resolved_node_url(self) -> str:
        if self.node_url:
            return self.node_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def resolved_tunnel_port(self) -> int:
        return self.node_tunnel_port or self.port + 1

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def bootstrap_key_file(self) -> Path:
        return self.data_dir / "bootstrap-key"

    @property
    def external_base_url(self) -> str:
        """``public_base_url``, or the bind address as a URL (no trailing slash)."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def describe(self) -> list[tuple[str, str, str]]:
        """(env var, current value, description) for every field; secrets are masked."""
        rows = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "********"
            elif value is None:
                shown = ""
            else:
                shown = str(value.value if isinstance(value, StrEnum) else value)
            rows.append((f"VOIDRUN_{name.upper()}", shown, field.description or ""))
        return rows

    # -- gvisor driver --
    gvisor_runsc_path: str = Field(
        "", description="The runsc binary of the gvisor driver; empty: runsc found through PATH."
    )
    gvisor_platform: Literal["auto", "systrap", "kvm", "ptrace"] = Field(
        "auto",
        description=(
            "gVisor platform: auto probes systrap, then kvm (each must run a sandbox within "
            "VOIDRUN_GVISOR_PROBE_TIMEOUT_SECONDS) and falls back to ptrace; the answer is kept "
            "per runsc build and kernel in .platform.json of the agent runtime directory."
        ),
    )
    gvisor_probe_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        10.0, description="How long one platform probe of the gvisor driver may take."
    )
