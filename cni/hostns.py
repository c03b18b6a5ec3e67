"""Acting in the namespace the plugin "runs in" (the node's), whoever calls it.

An exec'd plugin already lives in the node's namespace; the in-process API
is called from the lab process in the host's root namespace and is handed
the node's namespace instead. Everything that is not netlink (sysctls,
iptables) goes through here, so neither path can touch the caller's
namespace by accident.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

    from cni import skel


def _rel(key: str) -> str:
    # A key in /proc/sys path form (with '/') is taken as it is: an interface
    # name may hold dots (eth0.100), which the dotted form cannot carry, as
    # sysctl(8) writes net.ipv4.conf.eth0/100.route_localnet.
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def ensure_sysctl(args: skel.Args, key: str, value: str = "1") -> None:
    """As the reference's ip.EnableIP4Forward (echo1): write only if it differs.

    `key` is dotted (net.ipv4.ip_forward) or a /proc/sys path
    (net/ipv4/conf/eth0.100/route_localnet), as the reference's sysctl.Sysctl takes it.
    """

    def do() -> None:
        with open(_rel(key), "r+") as f:
            if f.read().strip() != value:
                f.seek(0)
                f.write(value)

    if args.host_netns is None:
        do()
    else:
        from netlab import netns

        with netns.entered(args.host_netns):
            do()


def run(args: skel.Args, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (iptables-restore, iptables-save) in the plugin's namespace."""
    import subprocess

    kw = dict(input=input, capture_output=True, text=True)
    if args.host_netns is None:
        return subprocess.run(argv, **kw)
    from netlab import netns

    return netns.run_in(args.host_netns, argv, **kw)
