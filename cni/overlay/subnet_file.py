"""subnet.env, as flanneld writes it (/run/flannel/subnet.env).

The CNI side reads it (flannel's CNI plugin delegates to bridge + host-local
with FLANNEL_SUBNET and FLANNEL_MTU); the agent reads it back on restart to
ask for the same subnet again, as flanneld's ReadCIDRFromSubnetFile does.
When the CNI package's renderer (cni.subnet_env.render) is present it is
the one source of the format; this module only writes atomically.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Network


def render(network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> str:
    try:
        from cni.subnet_env import render as cni_render  # the CNI engineer's, when it lands
    except ImportError:
        cni_render = None
    if cni_render is not None:
        return cni_render(network, subnet, mtu, ipmasq)
    # FLANNEL_SUBNET is the subnet's first host address with the subnet's prefix (cni0's address).
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
    )


def write_subnet_env(path: str, network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> None:
    """Write subnet.env atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(render(network, subnet, mtu, ipmasq))
    os.replace(tmp, path)


def read_env(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    out = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            out[key] = value
    return out


def read_subnet(path: str) -> IPv4Network | None:
    """The subnet a previous run wrote (FLANNEL_SUBNET=10.244.1.1/24 → 10.244.1.0/24)."""
    value = read_env(path).get("FLANNEL_SUBNET")
    if not value:
        return None
    try:
        return IPv4Network(value, strict=False)
    except ValueError:
        return None
