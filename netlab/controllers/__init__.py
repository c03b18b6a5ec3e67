"""kube-controller-manager's roles that the service proxy needs, and the API server's admission.

- `admit_service`: clusterIP and nodePort allocation at `netlab apply`;
- `EndpointSliceController`: Pods + Services -> EndpointSlices;
- `LoadBalancerController`: LoadBalancer ingress IPs from the Lab's pool, announced to
  external clients.
`run_controllers` is what the lab daemon (netlab.labd) runs.
"""

from __future__ import annotations

import threading

from netlab.controllers.admission import NODE_PORT_RANGE, admit_service
from netlab.controllers.endpointslice import EndpointSliceController, desired_slices
from netlab.controllers.loadbalancer import LoadBalancerController, assign


def run_controllers(store_url: str, lab: str, stop: threading.Event) -> None:
    """Both controllers, each on its own store connection, until `stop` is set."""
    from netlab import store as st

    store = st.open_store(store_url)
    rec = store.get(st.object_key("Lab", None, lab))
    pool = (rec.value.get("spec", {}).get("loadBalancerPool") if rec else None)
    threads = [threading.Thread(target=EndpointSliceController(store).run, args=(stop,), name="endpointslice",
                                daemon=True)]
    if pool:
        lb_store = st.open_store(store_url)
        threads.append(threading.Thread(target=LoadBalancerController(lb_store, lab, pool).run, args=(stop,),
                                        name="loadbalancer", daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


__all__ = [
    "NODE_PORT_RANGE",
    "EndpointSliceController",
    "LoadBalancerController",
    "admit_service",
    "assign",
    "desired_slices",
    "run_controllers",
]
