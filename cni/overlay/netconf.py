"""flannel's net-conf.json: parsed, defaulted and validated before anything is touched.

The keys are flannel's own (kube-flannel's ConfigMap ``net-conf.json``, and
``/coreos.com/network/config`` in etcd), so a file that works with flanneld
works here. Defaults follow flannel's pkg/subnet/config.go (ParseConfig and
its SubnetLen/SubnetMin/SubnetMax defaulting) and the vxlan backend's
RegisterNetwork (VNI 1; port 0 meaning the kernel's 8472; MTU from the
external interface).

Every problem is a SpecError naming the key, so ``netlab apply`` can refuse a
bad podNetwork with one clear message before any namespace exists.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from netlab.errors import SpecError, closest

BACKENDS = ("vxlan", "host-gw")
DEFAULT_VNI = 1  # as flannel's vxlan.go defaultVNI
KERNEL_VXLAN_PORT = 8472  # Linux's default dstport, which flannel's Port 0 leaves in place
ENCAP_OVERHEAD = 50  # as flannel's vxlan_network.go encapOverhead: outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14

_TOP_KEYS = {"Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6", "EnableNFTables"}
_BACKEND_KEYS = {
    "vxlan": {"Type", "VNI", "Port", "MTU", "DirectRouting", "GBP", "Learning"},
    "host-gw": {"Type"},
}


@dataclass(frozen=True)
class Backend:
    type: str  # "vxlan" or "host-gw"
    vni: int = DEFAULT_VNI
    port: int = KERNEL_VXLAN_PORT
    mtu: int | None = None  # Backend.MTU: the underlay MTU to plan for; None = the interface's
    direct_routing: bool = False
    gbp: bool = False  # VXLAN Group Based Policy extension (flannel's Backend.GBP: `ip link ... gbp`)
    learning: bool = False  # source-address learning on flannel.<VNI> (flannel's Backend.Learning)

    @property
    def device(self) -> str:
        """The VXLAN device's name, as flannel's vxlan.go: ``flannel.<VNI>``."""
        return f"flannel.{self.vni}"


@dataclass(frozen=True)
class NetConf:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: Backend

    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    def candidate_subnets(self) -> list[IPv4Network]:
        """Every subnet a node may lease, lowest first (SubnetMin..SubnetMax inclusive)."""
        size = self.subnet_size()
        first, last = int(self.subnet_min), int(self.subnet_max)
        return [IPv4Network((a, self.subnet_len)) for a in range(first, last + 1, size)]

    def in_range(self, subnet: IPv4Network) -> bool:
        return (
            subnet.prefixlen == self.subnet_len
            and subnet.subnet_of(self.network)
            and int(self.subnet_min) <= int(subnet.network_address) <= int(self.subnet_max)
        )

    def mtu(self, underlay_mtu: int) -> int:
        """The MTU pods and the overlay device get, as flannel's subnet.env FLANNEL_MTU.

        vxlan: (Backend.MTU or the underlay's) − 50; host-gw adds no header.
        """
        base = self.backend.mtu or underlay_mtu
        return base - ENCAP_OVERHEAD if self.backend.type == "vxlan" else base

    def to_json(self) -> dict[str, Any]:
        """The net-conf.json this parses back to (flannel's keys)."""
        backend: dict[str, Any] = {"Type": self.backend.type}
        if self.backend.type == "vxlan":
            backend.update(VNI=self.backend.vni, Port=self.backend.port)
            if self.backend.direct_routing:  # omitted when false, as flannel's own examples write it
                backend["DirectRouting"] = True
            if self.backend.mtu is not None:
                backend["MTU"] = self.backend.mtu
            if self.backend.gbp:
                backend["GBP"] = True
            if self.backend.learning:
                backend["Learning"] = True
        return {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min),
            "SubnetMax": str(self.subnet_max),
            "Backend": backend,
        }


def _err(where: str, field: str, message: str, hint: str = "") -> SpecError:
    return SpecError(where, field, message, hint)


def _int(where: str, field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(where, field, f"must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise _err(where, field, f"{value} is out of range", f"use {lo}..{hi}")
    return value


def _bool(where: str, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(where, field, f"must be true or false, not {value!r}")
    return value


def _unknown(where: str, prefix: str, key: str, allowed: set[str], what: str) -> SpecError:
    near = closest(key, allowed)
    hint = f"did you mean {near!r}?" if near else f"{what} takes {', '.join(sorted(allowed))}"
    return _err(where, prefix + key, f"unknown key {key!r}", hint)


def _addr(where: str, field: str, value: Any) -> IPv4Address:
    try:
        return IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise _err(where, field, f"{value!r} is not an IPv4 address") from None


def parse(raw: dict[str, Any] | str, where: str = "net-conf.json") -> NetConf:
    """Parse flannel's net-conf.json (a dict or its JSON text) into a NetConf.

    Unknown keys are errors rather than silently ignored (flanneld ignores
    them): a typo such as "SubnetLength" would otherwise lease /24s the user
    did not ask for.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise _err(where, "", f"not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise _err(where, "", "must be a JSON object with flannel's keys", 'e.g. {"Network": "10.244.0.0/16"}')
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _unknown(where, "", str(unknown[0]), _TOP_KEYS, "net-conf.json")
    if raw.get("EnableIPv4", True) is not True:
        raise _err(where, "EnableIPv4", "netlab's overlay is IPv4: EnableIPv4 must be true")
    if raw.get("EnableIPv6", False) is not False:
        raise _err(where, "EnableIPv6", "IPv6 overlays are not supported yet", "remove EnableIPv6")

    if "Network" not in raw:
        raise _err(where, "Network", "is required", 'e.g. "10.244.0.0/16"')
    try:
        network = IPv4Network(raw["Network"], strict=True)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError) as e:
        raise _err(where, "Network", f"{raw['Network']!r} is not an IPv4 network: {e}", 'e.g. "10.244.0.0/16"') from None

    # SubnetLen defaulting as flannel's config.go: /24 for networks larger than /24,
    # else one bit longer than the network.
    if "SubnetLen" in raw:
        subnet_len = _int(where, "SubnetLen", raw["SubnetLen"], 1, 30)
        if subnet_len <= network.prefixlen:
            raise _err(where, "SubnetLen", f"SubnetLen {subnet_len} must be longer than the Network's /{network.prefixlen}",
                       f"use a SubnetLen above {network.prefixlen}, e.g. {min(network.prefixlen + 8, 30)}")
    elif network.prefixlen < 24:
        subnet_len = 24
    elif network.prefixlen < 30:
        subnet_len = network.prefixlen + 1
    else:
        raise _err(where, "Network", f"{network} is too small to hold node subnets", "use a /29 or larger")
    size = 1 << (32 - subnet_len)

    def bound(key: str, default: int) -> IPv4Address:
        if key not in raw:
            return IPv4Address(default)
        a = _addr(where, key, raw[key])
        if a not in network:
            raise _err(where, key, f"{a} is outside Network {network}")
        if (int(a) - int(network.network_address)) % size:
            raise _err(where, key, f"{a} is not the start of a /{subnet_len} inside {network}")
        return a

    # flannel skips the network's first subnet by default (its .0 would be the network address).
    subnet_min = bound("SubnetMin", int(network.network_address) + size)
    subnet_max = bound("SubnetMax", int(network.broadcast_address) + 1 - size)
    if int(subnet_min) > int(subnet_max):
        raise _err(where, "SubnetMin", f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}")

    backend = _parse_backend(raw.get("Backend", {"Type": "vxlan"}), where)
    return NetConf(network, subnet_len, subnet_min, subnet_max, backend)


def _parse_backend(raw: Any, where: str) -> Backend:
    if not isinstance(raw, dict):
        raise _err(where, "Backend", "must be an object", '{"Type": "vxlan"}')
    type_ = raw.get("Type", "udp")  # flannel's own default backend is udp, which netlab does not have
    if type_ not in BACKENDS:
        raise _err(where, "Backend.Type", f"unknown backend {type_!r}", f"use one of: {', '.join(BACKENDS)}")
    unknown = sorted(set(raw) - _BACKEND_KEYS[type_])
    if unknown:
        raise _unknown(where, "Backend.", str(unknown[0]), _BACKEND_KEYS[type_], f"the {type_} backend")
    if type_ == "host-gw":
        return Backend("host-gw")
    vni = _int(where, "Backend.VNI", raw.get("VNI", DEFAULT_VNI), 1, (1 << 24) - 1)
    port = raw.get("Port", 0)
    port = _int(where, "Backend.Port", port, 0, 65535) or KERNEL_VXLAN_PORT
    mtu = raw.get("MTU")
    if mtu is not None:
        mtu = _int(where, "Backend.MTU", mtu, 68 + ENCAP_OVERHEAD, 65535)
    # flannel's vxlan.go reads GBP and Learning too (both off by default).
    direct, gbp, learning = (
        _bool(where, f"Backend.{key}", raw.get(key, False)) for key in ("DirectRouting", "GBP", "Learning"))
    if len(f"flannel.{vni}") > 15:
        raise _err(where, "Backend.VNI", f"device name flannel.{vni} is longer than 15 characters")
    return Backend("vxlan", vni=vni, port=port, mtu=mtu, direct_routing=direct, gbp=gbp, learning=learning)
