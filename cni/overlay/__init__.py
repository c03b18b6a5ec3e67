"""The overlay: flannel's data plane between nodes (vxlan or host-gw), driven by subnet leases.

- netconf:     flannel's net-conf.json, validated
- lease:       /coreos.com/network/subnets/* leases: schema, acquire, renew, release
- plan:        leases → desired kernel state, and its diff against the observed (pure)
- kernel:      observe and apply through netlink, inside the node namespace
- agent:       flanneld's loop (watch + resync)
- subnet_file: subnet.env
Run as ``python -m cni.overlay`` (see __main__).
"""
