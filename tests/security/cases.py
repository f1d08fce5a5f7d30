"""Hand-written hostile `host_config`s, one or more per escape class, each with the policy it runs under.

`default` allows nothing; `host_path` allows the tmp dir `ALLOWED_DIR` (with symlinks to /etc and the
socket in it); `overrides` also allows `volumes` and `networks` and sets maxima; `root` allows host path `/`.
"""

from __future__ import annotations

from typing import Any

from tests.security.strategies import ALLOWED_DIR, VOLUME_PREFIX

VOLUME = f"{VOLUME_PREFIX}a"
DATA = f"{ALLOWED_DIR}/data"
ETC_BIND = {"o": "bind", "device": "/etc", "type": "none"}

HOSTILE: list[tuple[str, str, dict[str, Any]]] = [
    ("privileged", "default", {"privileged": True}),
    ("privileged-string", "default", {"privileged": "true"}),
    ("cap_add", "default", {"cap_add": ["SYS_ADMIN"]}),
    ("host-network", "default", {"network_mode": "host"}),
    ("network-container", "default", {"network_mode": "container:lasec-none"}),
    ("network-named", "default", {"network_mode": "lasec-net"}),
    ("host-pid", "default", {"pid_mode": "host"}),
    ("pid-container", "default", {"pid_mode": "container:lasec-none"}),
    ("host-ipc", "default", {"ipc_mode": "host"}),
    ("host-uts", "default", {"uts_mode": "host"}),
    ("host-userns", "default", {"userns_mode": "host"}),
    ("devices", "default", {"devices": ["/dev/null:/dev/xnull:rwm"]}),
    ("device-cgroup-rules", "default", {"device_cgroup_rules": ["a *:* rwm"]}),
    ("gpus", "default", {"device_requests": [{"Count": -1, "Capabilities": [["gpu"]]}]}),
    ("gpus-lowercase", "default", {"device_requests": [{"count": -1, "capabilities": [["gpu"]]}]}),
    ("bind-etc", "default", {"binds": ["/etc:/h"]}),
    ("bind-etc-dict", "default", {"volumes": {"/etc": {"bind": "/h", "mode": "rw"}}}),
    ("bind-socket", "default", {"binds": ["/var/run/docker.sock:/s"]}),
    (
        "mounts-socket",
        "default",
        {"mounts": [{"Type": "bind", "Source": "/run/docker.sock", "Target": "/s"}]},
    ),
    # 1. the Go decoder matches keys case-insensitively and keeps the last spelling
    (
        "case-tmpfs-to-bind-root",
        "default",
        {"mounts": [{"Type": "tmpfs", "Target": "/h", "type": "bind", "source": "/"}]},
    ),
    (
        "case-volume-to-bind-root",
        "overrides",
        {"mounts": [{"Type": "volume", "Source": VOLUME, "Target": "/h", "type": "bind", "source": "/"}]},
    ),
    ("case-lowercase-only", "default", {"mounts": [{"type": "bind", "source": "/etc", "target": "/h"}]}),
    (
        "case-upper-source",
        "host_path",
        {"mounts": [{"Type": "bind", "Source": DATA, "SOURCE": "/etc", "Target": "/h"}]},
    ),
    # 2. a local volume with bind options is a host bind in disguise
    (
        "volume-driver-bind",
        "overrides",
        {
            "mounts": [
                {
                    "Type": "volume",
                    "Source": VOLUME,
                    "Target": "/v",
                    "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": ETC_BIND}},
                }
            ]
        },
    ),
    (
        "volume-driver-bind-lowercase",
        "overrides",
        {
            "mounts": [
                {
                    "type": "volume",
                    "source": VOLUME,
                    "target": "/v",
                    "volumeoptions": {"driverconfig": {"name": "local", "options": ETC_BIND}},
                }
            ]
        },
    ),
    (
        "anonymous-volume-driver-bind",
        "default",
        {
            "mounts": [
                {
                    "Type": "volume",
                    "Target": "/v",
                    "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": ETC_BIND}},
                }
            ]
        },
    ),
    # 3. logging and the OOM killer
    ("log-driver-none", "default", {"log_config": {"Type": "none"}}),
    (
        "log-syslog-remote",
        "default",
        {"log_config": {"type": "syslog", "config": {"syslog-address": "udp://10.0.0.1:514"}}},
    ),
    ("oom-score-adj", "default", {"oom_score_adj": -1000}),
    ("oom-kill-disable", "default", {"oom_kill_disable": True}),
    # 4. path spellings and symlinks
    ("socket-double-slash", "root", {"binds": ["//var/run/docker.sock:/s"]}),
    ("socket-dot", "root", {"binds": ["/var/./run/docker.sock:/s"]}),
    ("socket-dir-trailing-slash", "root", {"binds": ["/var/run/:/r"]}),
    ("root-double-slash", "root", {"binds": ["//:/h"]}),
    (
        "mounts-socket-double-slash",
        "root",
        {"mounts": [{"Type": "bind", "Source": "//run/docker.sock", "Target": "/s"}]},
    ),
    ("proc-1-root", "root", {"binds": ["/proc/1/root:/h"]}),  # the daemon's PID 1: the host's /
    ("proc-self-root", "root", {"binds": ["/proc/self/root/run:/r"]}),
    ("dotdot-out-of-allowed", "host_path", {"binds": [f"{DATA}/../../../etc:/h"]}),
    ("sibling-prefix", "host_path", {"binds": [f"{ALLOWED_DIR}x:/h"]}),
    ("symlink-to-etc", "host_path", {"binds": [f"{ALLOWED_DIR}/etc-link:/h"]}),
    ("symlink-to-socket", "host_path", {"binds": [f"{ALLOWED_DIR}/sock-link:/s"]}),
    (
        "symlink-to-root",
        "host_path",
        {"mounts": [{"Type": "bind", "Source": f"{ALLOWED_DIR}/root-link", "Target": "/h"}]},
    ),
    ("symlink-to-run", "host_path", {"binds": {f"{ALLOWED_DIR}/run-link": "/r"}}),
    # volumes, namespaces' cousins, kernel knobs
    ("named-volume", "default", {"binds": [f"{VOLUME}:/v"]}),
    ("named-volume-mount", "default", {"mounts": [{"Type": "volume", "Source": VOLUME, "Target": "/v"}]}),
    ("volumes-from", "default", {"volumes_from": ["lasec-none"]}),
    ("links", "default", {"links": {"lasec-none": "db"}}),
    ("security-opt", "default", {"security_opt": ["seccomp=unconfined"]}),
    ("sysctls", "default", {"sysctls": {"net.ipv4.ip_forward": "1"}}),
    ("ulimits", "default", {"ulimits": [{"Name": "nofile", "Soft": 1048576, "Hard": 1048576}]}),
    ("ulimits-lowercase", "default", {"ulimits": [{"name": "memlock", "soft": -1, "hard": -1}]}),
    ("tmpfs-suid-dev", "default", {"tmpfs": {"/t": "size=1m,suid,dev,exec"}}),
    ("tmpfs-list-form", "default", {"tmpfs": ["/t:mpol=default,huge=always"]}),
    ("ports-int", "default", {"port_bindings": {8080: 18080}}),
    ("ports-string", "default", {"port_bindings": {"8080/tcp": "18080"}}),
    ("ports-json-pair", "default", {"port_bindings": {"8080": ["0.0.0.0", 18080]}}),
    ("ports-explicit", "default", {"port_bindings": {"8080": {"HostIp": "0.0.0.0", "HostPort": "18080"}}}),
    ("ports-list", "default", {"port_bindings": {"8080": [{"HostIp": "10.0.0.1", "HostPort": "1"}, 18081]}}),
    ("publish-all-ports", "default", {"publish_all_ports": True}),
    ("propagation-binds", "host_path", {"binds": [f"{DATA}:/h:rshared"]}),
    (
        "propagation-mounts",
        "host_path",
        {
            "mounts": [
                {"Type": "bind", "Source": DATA, "Target": "/h", "BindOptions": {"Propagation": "rshared"}}
            ]
        },
    ),
    (
        "propagation-mounts-lowercase",
        "host_path",
        {
            "mounts": [
                {"Type": "bind", "Source": DATA, "Target": "/h", "bindoptions": {"propagation": "rslave"}}
            ]
        },
    ),
    ("runtime", "default", {"runtime": "io.containerd.runc.v2"}),
    ("cgroup-parent", "default", {"cgroup_parent": "lasec"}),
    ("unknown-engine-name", "default", {"Privileged": True}),
    ("volume-driver", "default", {"volume_driver": "local"}),
    # maxima: clamped, never exceeded
    ("memory-above", "overrides", {"mem_limit": "4g"}),
    ("memory-unlimited", "overrides", {"mem_limit": -1}),
    ("memory-zero", "overrides", {"mem_limit": 0}),
    ("swap-unlimited", "overrides", {"memswap_limit": -1}),
    ("cpus-above", "overrides", {"nano_cpus": 8 * 10**9}),
    ("cpu-quota-above", "overrides", {"cpu_quota": 800_000, "cpu_period": 100_000}),
    ("cpu-quota-with-nano", "overrides", {"cpu_quota": 800_000, "nano_cpus": 10**8}),
    ("pids-unlimited", "overrides", {"pids_limit": -1}),
    ("pids-zero", "overrides", {"pids_limit": 0}),
]

BENIGN: list[tuple[str, str, dict[str, Any]]] = [
    ("init-and-shm", "default", {"init": False, "shm_size": "64m"}),
    ("allowed-bind", "host_path", {"binds": [f"{DATA}:/d:ro"]}),
    ("allowed-volume", "overrides", {"binds": [f"{VOLUME}:/v"], "mem_limit": "128m"}),
]
