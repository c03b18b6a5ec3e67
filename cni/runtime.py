"""A runtime-style driver: calls plugin executables exactly as containerd does.

Plugins are found along CNI_PATH by their type, run with the CNI_*
variables and the config on stdin, in the namespace the runtime lives in
(here: a node namespace, entered by the child only), and their stdout is
the result or an error object. Conflists are chained by `cni.libcni`.
Used by the differential tests and the benchmark; the lab itself uses the
in-process `cni.api`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field

from cni import libcni
from cni.errors import CNIError, INTERNAL


@dataclass
class ExecResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict | None:
        return json.loads(self.stdout) if self.stdout.strip() else None


@dataclass
class Runtime:
    cni_path: list[str]
    host_netns: str | None = None  # where the plugins run (the node); None: here
    extra_env: dict[str, str] = field(default_factory=dict)

    def find(self, type_: str) -> str:
        for d in self.cni_path:
            p = os.path.join(d, type_)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise CNIError(INTERNAL, f'failed to find plugin "{type_}" in path {self.cni_path}')

    def env(self, command: str, container_id: str = "", netns: str = "", ifname: str = "", args: str = "") -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env.update(self.extra_env)
        env.update(CNI_COMMAND=command, CNI_PATH=os.pathsep.join(self.cni_path))
        if container_id:
            env["CNI_CONTAINERID"] = container_id
        if netns:
            env["CNI_NETNS"] = netns
        if ifname:
            env["CNI_IFNAME"] = ifname
        if args:
            env["CNI_ARGS"] = args
        return env

    def exec_raw(self, exe: str, env: dict[str, str], stdin: bytes) -> ExecResult:
        if self.host_netns is not None:
            from netlab import netns

            p = netns.run_in(self.host_netns, [exe], input=stdin, capture_output=True, env=env)
        else:
            p = subprocess.run([exe], input=stdin, capture_output=True, env=env)
        return ExecResult(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    def invoker(self, container_id: str, netns: str, ifname: str = "eth0", args: str = ""):
        def invoke(command: str, conf: dict) -> dict | None:
            env = self.env(command, container_id, netns, ifname, args)
            r = self.exec_raw(self.find(conf["type"]), env, json.dumps(conf).encode())
            if r.code != 0:
                try:
                    e = json.loads(r.stdout)
                    raise CNIError(int(e["code"]), e.get("msg", ""), e.get("details", ""))
                except (ValueError, KeyError, TypeError):
                    raise CNIError(INTERNAL, f"{conf['type']} failed", r.stdout + r.stderr) from None
            return r.json()

        return invoke

    def add(self, conf: dict, container_id: str, netns: str, ifname: str = "eth0", args: str = "",
            runtime_config: dict | None = None) -> dict | None:
        return libcni.add_list(conf, self.invoker(container_id, netns, ifname, args), runtime_config)

    def delete(self, conf: dict, container_id: str, netns: str, ifname: str = "eth0", args: str = "",
               runtime_config: dict | None = None, prev: dict | None = None) -> None:
        libcni.del_list(conf, self.invoker(container_id, netns, ifname, args), runtime_config, prev)

    def check(self, conf: dict, container_id: str, netns: str, prev: dict, ifname: str = "eth0") -> None:
        libcni.check_list(conf, self.invoker(container_id, netns, ifname), prev)

    def gc(self, conf: dict, valid_attachments: list[dict]) -> None:
        libcni.gc_list(conf, self.invoker("", ""), valid_attachments)
