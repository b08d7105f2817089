"""The sandbox's node agent: a kubelet for pods whose containers are local commands.

`agent` registers the Node and watches pods, `pod` runs one pod's lifecycle,
`env` and `volumes` turn the pod spec into what a container process sees, and
`launch` starts one container in its own mount namespace.
"""
