#!/usr/bin/env python3
"""Rebuild behalf's policies directory exactly as the agent pod sees it.

Reads rendered manifests on stdin (e.g. `kubectl kustomize deploy/kubernetes`), finds the
Deployment's `behalf-policies` projected volume and writes every item of every ConfigMap it
projects to OUT/<item path>, so that `behalf policy check OUT` and `behalf policy test OUT`
check what will really be mounted. Exits 1 if an item names a key its ConfigMap lacks (the pod
would not start) and warns about ConfigMap keys no item mounts (behalf would never see them).

    kubectl kustomize deploy/kubernetes | python3 deploy/kubernetes/extract-policies.py /tmp/policies

Needs PyYAML (installed with kubernetes-validate).
"""
import pathlib
import sys

import yaml

VOLUME = "behalf-policies"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = pathlib.Path(sys.argv[1])
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    volumes = [
        v
        for d in docs
        if d["kind"] == "Deployment"
        for v in d["spec"]["template"]["spec"].get("volumes", [])
        if v["name"] == VOLUME
    ]
    if len(volumes) != 1:
        print(f"error: expected one Deployment volume `{VOLUME}`, found {len(volumes)}", file=sys.stderr)
        return 1
    status = 0
    for source in volumes[0]["projected"]["sources"]:
        ref = source.get("configMap")
        if ref is None:
            continue
        name = ref["name"]
        if name not in config_maps:
            print(f"error: ConfigMap `{name}` is projected but not in the manifests", file=sys.stderr)
            status = 1
            continue
        data = config_maps[name]
        listed = set()
        for item in ref.get("items", []):
            listed.add(item["key"])
            if item["key"] not in data:
                print(f"error: ConfigMap `{name}` has no key `{item['key']}`", file=sys.stderr)
                status = 1
                continue
            path = out / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[item["key"]])
            print(f"{name}/{item['key']} -> {path}")
        for key in sorted(set(data) - listed):
            print(f"warning: ConfigMap `{name}` key `{key}` is not mounted (no item)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
