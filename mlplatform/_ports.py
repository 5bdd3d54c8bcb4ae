"""A free local TCP port for a server about to start (tests, benchmarks, ``mlp cluster up-local``)."""

import random
import socket

#: Below the kernel's ephemeral range (32768-60999 by default), where every outgoing connection
#: and Ray's own gRPC servers take their ports, and above Ray's worker ports (10002-19999). A
#: port taken from the ephemeral range was seen grabbed by a Ray process between its choice and
#: HAProxy's bind ("Address already in use").
PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, never handed out before by this process.

    Raises:
        RuntimeError: No free port in :data:`PORT_RANGE` after many tries.
    """
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(*PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on {host} in {PORT_RANGE}")
