"""The sandbox: a real local Kubernetes control plane plus a node agent.

`tonebridge-dr sandbox up|status|down` (cli) and the pytest fixture
(tests/fixtures/sandbox.py) both go through `runtime`, which starts a
`supervisor` process. The supervisor runs etcd, kube-apiserver and
kube-controller-manager (`controlplane`, certificates from `pki`), installs the
CRDs (`crds`) and runs the node agent (`node`), which binds every pod to its
one Node and runs the containers' commands as local processes. Every process
is tracked so that none outlives the sandbox (`procs`). Paths: `layout`.

Importing this package loads nothing heavy; import the submodules you need.
"""
