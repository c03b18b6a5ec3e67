"""Names of everything netlab makes, in one place.

Principle 3 (own what you make): every namespace, link, file and process of
a lab is recognisable as that lab's from its name alone, so `down` and
`cleanup` remove exactly those. Kubernetes names never contain "." in
labels (lab, node, namespace), so the dotted netns names below cannot
collide between labs:

- ``netlab.<lab>``                        the lab's own namespace (underlay L2 segment)
- ``netlab.<lab>.<node>``                 a node
- ``netlab.<lab>.<node>.<ns>.<pod>``      a pod sandbox (pod names may hold dots; they come last)
- ``netlab.<lab>.ext.<client>``           an external client on the underlay
"""

from __future__ import annotations

import os

NETNS_PREFIX = "netlab."
RUN_DIR = os.environ.get("NETLAB_RUN_DIR", "/run/netlab")

# Faithful device names.
UNDERLAY_BRIDGE = "underlay"  # the L2 segment the nodes' eth0 hang off, in the lab namespace
NODE_UPLINK = "eth0"
CNI_BRIDGE = "cni0"
POD_IFNAME = "eth0"
IFNAMSIZ = 15  # the kernel's interface-name limit, without the NUL


def lab_netns(lab: str) -> str:
    return f"{NETNS_PREFIX}{lab}"


def node_netns(lab: str, node: str) -> str:
    return f"{NETNS_PREFIX}{lab}.{node}"


def pod_netns(lab: str, node: str, namespace: str, pod: str) -> str:
    return f"{NETNS_PREFIX}{lab}.{node}.{namespace}.{pod}"


def client_netns(lab: str, client: str) -> str:
    return f"{NETNS_PREFIX}{lab}.ext.{client}"


def lab_of_netns(name: str) -> str | None:
    """The lab a netns name belongs to, or None if it is not netlab's."""
    if not name.startswith(NETNS_PREFIX):
        return None
    rest = name[len(NETNS_PREFIX):]
    lab = rest.split(".", 1)[0]
    return lab or None


def lab_dir(lab: str) -> str:
    """The lab's state dir: /run/netlab/<lab>/ (tmpfs: gone on reboot, as the namespaces are)."""
    return os.path.join(RUN_DIR, lab)


def store_path(lab: str) -> str:
    return os.path.join(lab_dir(lab), "store.db")


def node_dir(lab: str, node: str) -> str:
    """Per-node files, standing in for the node's /run and /var/lib (subnet.env, IPAM, CNI config)."""
    return os.path.join(lab_dir(lab), "nodes", node)


def subnet_env_path(lab: str, node: str) -> str:
    """flannel's /run/flannel/subnet.env for this node."""
    return os.path.join(node_dir(lab, node), "flannel", "subnet.env")


def cni_net_dir(lab: str, node: str) -> str:
    """The node's /etc/cni/net.d."""
    return os.path.join(node_dir(lab, node), "cni", "net.d")


def cni_data_dir(lab: str, node: str) -> str:
    """The node's /var/lib/cni (host-local's networks/ lives below it)."""
    return os.path.join(node_dir(lab, node), "cni", "lib")


def underlay_port(node: str) -> str:
    """The underlay-side end of a node's eth0: named after the node, as a switch port label."""
    return node
