"""flannel's /run/flannel/subnet.env: written by flanneld, read by the flannel CNI plugin.

The format is flanneld's own (subnet/config.go WriteSubnetFile): KEY=VALUE
lines, FLANNEL_SUBNET carrying the node's gateway address (.1) with the
subnet's prefix length, exactly as a real node has it:

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.1.1/24
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=true
"""

from __future__ import annotations

import ipaddress


def render(network: str, subnet: str, mtu: int, ipmasq: bool) -> str:
    """subnet.env text for a node leasing `subnet` (e.g. "10.244.1.0/24") of `network`.

    flanneld writes the subnet's first address (the cni0 gateway) with the
    lease's prefix length; passing "10.244.1.1/24" is accepted as well.
    """
    net = ipaddress.ip_network(network)
    sn = ipaddress.ip_interface(subnet).network
    if sn.version != net.version or not sn.subnet_of(net):  # type: ignore[arg-type]
        raise ValueError(f"subnet {subnet} is not inside network {network}")
    gw = sn.network_address + 1
    return (
        f"FLANNEL_NETWORK={net}\n"
        f"FLANNEL_SUBNET={gw}/{sn.prefixlen}\n"
        f"FLANNEL_MTU={int(mtu)}\n"
        f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
    )


def parse(text: str) -> dict:
    """The values of a subnet.env, as the flannel CNI plugin's loadFlannelSubnetEnv reads them.

    Returns ``{"network": "10.244.0.0/16", "networks": ["10.244.0.0/16"],
    "subnet": "10.244.1.0/24", "mtu": 1450, "ipmasq": True}`` plus the IPv6
    keys when present (``network6``, ``networks6``, ``subnet6``). The subnet
    comes back as a network, as flannel's net.ParseCIDR does. A network
    line may list several CIDRs, comma-separated, as flanneld writes them
    for a multi-network config: ``networks`` holds each once, in order
    (flannel's isSubnetAlreadyPresent), ``network`` the first. Raises
    ValueError naming a bad line.
    """
    out: dict = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"subnet.env line {n}: expected KEY=VALUE, got {line!r}")
        try:
            if key in ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"):
                nets: list[str] = []
                for cidr in value.split(","):
                    cidr_s = str(ipaddress.ip_network(cidr, strict=False))
                    if cidr_s not in nets:
                        nets.append(cidr_s)
                suffix = "6" if key == "FLANNEL_IPV6_NETWORK" else ""
                out["network" + suffix], out["networks" + suffix] = nets[0], nets
            elif key == "FLANNEL_SUBNET":
                out["subnet"] = str(ipaddress.ip_interface(value).network)
            elif key == "FLANNEL_IPV6_SUBNET":
                out["subnet6"] = str(ipaddress.ip_interface(value).network)
            elif key == "FLANNEL_MTU":
                out["mtu"] = int(value)
            elif key == "FLANNEL_IPMASQ":
                if value not in ("true", "false"):
                    raise ValueError(f"not a boolean: {value!r}")
                out["ipmasq"] = value == "true"
        except ValueError as e:
            raise ValueError(f"subnet.env line {n} ({key}): {e}") from None
    return out
