"""subnet.env as the agent writes and re-reads it (flannel's /run/flannel/subnet.env).

The format lives in one place, cni.subnet_env (render/parse, flanneld's
WriteSubnetFile and the CNI plugin's loadFlannelSubnetEnv). This module
adds what the agent needs around it: an atomic write (the CNI plugin never
reads half a file), and reading back the subnet a previous run leased, so a
restarted agent asks for the same one (flanneld's ReadCIDRFromSubnetFile).
"""

from __future__ import annotations

import os
from ipaddress import IPv4Network

from cni import subnet_env


def write_subnet_env(path: str, network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(subnet_env.render(str(network), str(subnet), mtu, ipmasq))
    os.replace(tmp, path)


def read_values(path: str) -> dict:
    """The parsed subnet.env ({} when absent or unreadable)."""
    try:
        with open(path) as f:
            return subnet_env.parse(f.read())
    except (FileNotFoundError, ValueError):
        return {}


def read_subnet(path: str) -> IPv4Network | None:
    """The subnet a previous run wrote (FLANNEL_SUBNET=10.244.1.1/24 → 10.244.1.0/24)."""
    value = read_values(path).get("subnet")
    return IPv4Network(value) if value and ":" not in value else None
