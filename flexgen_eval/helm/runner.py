"""`helm-run --runner-class-name flexgen_eval.helm.runner.BatchingRunner`

HELM's executor sends one request per call. This runner's executor first hands all of a run
spec's requests to the flexgen client at once (`FlexGenClient.prefetch`: cached requests
skipped, the rest grouped by generation settings and run in large batches, each batch saved
to HELM's cache as it finishes), then lets the stock executor collect the results, which are
now cache hits. Deployments served by other clients run exactly as with the stock runner.
"""
from __future__ import annotations

import threading

from helm.benchmark.adaptation.scenario_state import ScenarioState
from helm.benchmark.executor import Executor
from helm.benchmark.metrics.metric_service import MetricService
from helm.benchmark.runner import Runner
from helm.benchmark.window_services.tokenizer_service import TokenizerService
from helm.common.hierarchical_logger import hlog, htrack
from helm.common.local_context import LocalContext


class BatchingExecutor(Executor):
    @htrack(None)
    def execute(self, scenario_state: ScenarioState) -> ScenarioState:
        if not self.execution_spec.dry_run:
            self._prefetch(scenario_state)
        return super().execute(scenario_state)

    def _prefetch(self, scenario_state: ScenarioState):
        if not isinstance(self.context, LocalContext):
            hlog("flexgen: batching needs a local context (no --server-url); running requests one by one")
            return
        from .client import FlexGenClient

        by_deployment: dict[str, list] = {}
        for state in scenario_state.request_states:
            by_deployment.setdefault(state.request.model_deployment, []).append(state.request)
        for deployment, requests in by_deployment.items():
            # AutoClient has no public accessor; this is the client HELM would use for the requests.
            client = self.context.client._get_client(deployment)
            if isinstance(client, FlexGenClient):
                _off_main_thread(client.prefetch, requests)


def _off_main_thread(fn, *args):
    """Run fn in a worker thread, as HELM's own executor does with -n > 1. On a busy CPU, torch ops
    issued from the main thread ran ~3x slower here than from a worker thread (SmolLM2 prefill:
    40 s vs 11 s on 2 oversubscribed cores). The thread is a daemon so Ctrl-C still ends the run."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    worker = threading.Thread(target=target, name="flexgen-helm-prefetch", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    if "error" in box:
        raise box["error"]
    return box.get("result")


class BatchingRunner(Runner):
    def __init__(self, execution_spec, *args, **kwargs):
        super().__init__(execution_spec, *args, **kwargs)
        self.executor = BatchingExecutor(execution_spec)
        # The services must talk to the same context (and thus the same clients) as the executor.
        self.tokenizer_service = TokenizerService(self.executor.context)
        self.metric_service = MetricService(self.executor.context)
