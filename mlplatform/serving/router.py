"""``Router``: the control plane of the traffic split.

It holds the routing config of its Serve ``user_config`` (arms, weights, sticky key, shadow),
probes every arm's ModelServer, and publishes a versioned :class:`~mlplatform.serving.routing.
RouteTable` (config + which models answer, with their versions and thresholds). The Ingress
replicas hold a copy, kept current by a long poll (:meth:`Router.routes`), and route every
request themselves (:mod:`mlplatform.serving.dispatch`): the Router is never on the request
path, so it costs no hop, and traffic keeps flowing on the last table while a Router replica is
replaced.
"""

import asyncio
import contextlib
import logging
from typing import Any

from ray import serve

logger = logging.getLogger("ray.serve")


#: Seconds a stopping Router replica waits for its requests in flight: they are the Ingress
#: replicas' long polls of :meth:`Router.routes`, which end only at their 10 s timeout, and an
#: Ingress whose poll is cut keeps its table and polls the next replica. Serve's default (20 s)
#: made every ``serve delete`` / ``serve shutdown`` / rolling update of the app wait out a poll
#: (9 s per delete here; 3 s with this).
GRACEFUL_SHUTDOWN_S = 1.0


@serve.deployment(graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
class Router:
    """Publishes the route table built from its ``user_config`` and its probes of the arms.

    ``servers`` maps each served model reference to its ModelServer handle. An arm is routed to
    only once its ModelServer has answered a probe (a model that fails to load never gets
    traffic). A new ``user_config`` is validated first: a bad one is logged, the running config
    stays, and the table says why (``config_error``); in a starting replica it fails the start,
    so the deploy reports it.
    """

    async def __init__(self, servers: dict[str, Any] | None, default_config: dict[str, Any],
                       served: list[str] | None = None, probe_interval_s: float = 2.0,
                       probe_timeout_s: float = 5.0):
        from mlplatform.serving.routing import RouterConfig

        # servers None: the models are embedded in the Ingress replicas (args.embed_models),
        # which know their own readiness; the Router then publishes the config alone.
        self._embedded = servers is None
        self._servers = servers or {}
        self._served = sorted(served if served is not None else self._servers)
        self._probe_interval_s, self._probe_timeout_s = probe_interval_s, probe_timeout_s
        self._ready: dict[str, dict[str, Any]] = {}      # model ref -> ModelServer.info()
        self._errors: dict[str, str] = {}                # model ref -> why it is not ready
        self._config_error: str | None = None
        self._configured = False          # True once a user_config was applied
        self._version = 0
        self._changed = asyncio.Event()   # set (and replaced) on every new table version
        self._apply(RouterConfig.from_user_config(default_config))
        self._prober = (None if self._embedded else
                        asyncio.get_running_loop().create_task(self._probe_forever()))

    # ---------------------------------------------------------------- configuration -------
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        from mlplatform.errors import ConfigError
        from mlplatform.serving.routing import RouterConfig

        try:
            config = RouterConfig.from_user_config(user_config)
        except ConfigError as exc:
            if not self._configured:      # a starting replica: fail the start, Serve reports it
                raise
            # Raising here would make Serve replace the replica; keep serving the old config.
            self._config_error = str(exc)
            logger.error("Router: new user_config rejected, the previous one stays: %s", exc)
            self._publish()
            return
        self._config_error = None
        self._apply(config)
        self._configured = True
        await self._probe_all()

    def _apply(self, config) -> None:
        self._config = config
        for ref in self._models(config):
            if ref not in self._served:
                self._errors[ref] = (f"no ModelServer serves {ref}: add it to the application's "
                                     f"args.models (served: {self._served})")
                logger.error("Router: arm model %s is not served; it gets no traffic", ref)
        self._publish()

    @staticmethod
    def _models(config) -> list[str]:
        refs = [a.model for a in config.arms]
        return refs + ([config.shadow.model] if config.shadow else [])

    def _publish(self) -> None:
        """A new table version: wake every long poll waiting for one."""
        from mlplatform.serving.routing import RouteTable

        self._version += 1
        self._table = RouteTable(self._config, self._ready, self._errors, self._version,
                                 self._config_error, self._served)
        self._changed.set()
        self._changed = asyncio.Event()

    # ---------------------------------------------------------------- probing -------------
    async def _probe_forever(self) -> None:
        while True:
            try:
                await self._probe_all()
            except Exception:   # a probe bug must not stop probing
                logger.exception("Router: probing the arms failed")
            await asyncio.sleep(self._probe_interval_s)   # the probe period

    async def _probe_all(self) -> None:
        refs = [r for r in self._models(self._config) if r in self._servers]
        results = await asyncio.gather(*(self._probe(r) for r in refs))
        changed = False
        for ref, (info, error) in zip(refs, results, strict=True):
            if info is not None:
                changed |= self._ready.get(ref) != info
                if ref not in self._ready:
                    logger.info("Router: %s is ready (version %s)", ref, info["model_version"])
                self._ready[ref] = info
                changed |= self._errors.pop(ref, None) is not None
            else:
                if ref in self._ready:
                    logger.error("Router: %s stopped answering, no traffic until it does: %s",
                                 ref, error)
                elif self._errors.get(ref) != error:
                    logger.error("Router: %s is not ready, it gets no traffic: %s", ref, error)
                changed |= self._ready.pop(ref, None) is not None or self._errors.get(ref) != error
                self._errors[ref] = error
        if changed:
            self._publish()

    async def _probe(self, ref: str) -> tuple[dict[str, Any] | None, str | None]:
        response = self._servers[ref].info.remote()
        try:
            return await asyncio.wait_for(response, self._probe_timeout_s), None
        except asyncio.TimeoutError:
            response.cancel()
            return None, (f"ModelServer for {ref} did not answer within {self._probe_timeout_s}s "
                          "(starting, or failed to load: see `serve status`)")
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

    # ---------------------------------------------------------------- publishing ----------
    async def routes(self, since: int = -1, timeout_s: float = 10.0,
                     probe: bool = False) -> dict[str, Any]:
        """The route table, as soon as its version is newer than ``since`` (a long poll).

        Args:
            since: The version the caller holds (-1: none; answered at once).
            timeout_s: Answer with the current table after this long even if unchanged.
            probe: Probe every arm first (a caller that found no arm ready).

        Returns:
            :meth:`RouteTable.to_dict` of the current table.
        """
        if probe:
            await self._probe_all()
        if self._version <= since:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self._table.to_dict()

    def models(self) -> dict[str, Any]:
        """Arms with their weights, models, loaded versions and readiness (``GET /models``)."""
        return self._table.view()
