"""Data parallelism across two Ray nodes (`ray.cluster_utils.Cluster`, one CPU each): one worker
per node; lm-eval gives the single process's samples, and `helm-run` joins the cluster through
`helm-config --data-parallel 2 --ray-address` and predicts what the single process predicts."""
import os
import sys

import pytest

ray = pytest.importorskip("ray")
import eval_checks  # noqa: E402
import helm_runs  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from flexgen_eval.parallel import chunks  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
TOL = 1e-5
STORE = 128 * 2**20


@pytest.fixture(scope="module")
def two_nodes():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunks, "MIN_CHUNK_REQUESTS", 1)  # the tests' small calls still spread over both nodes
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE})
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def test_lm_eval_on_two_nodes_gives_the_samples_of_one_process(two_nodes, tiny_llama_dir, flexgen_data_dir):
    pytest.importorskip("lm_eval")
    from flexgen_eval.lm_eval_backend import FlexGenLM

    manager = eval_checks.task_manager()
    tasks = ["offline_arc_easy", "offline_lambada_openai", "offline_demo_sequences"]
    args = dict(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size="1")
    one = FlexGenLM(**args)
    want = eval_checks.evaluate(one, tasks, manager, 4)
    one.llm.close()
    two = FlexGenLM(**args, data_parallel_size=2)
    try:
        assert two.llm.nodes == 2 and two.llm.threads == 1
        got = eval_checks.evaluate(two, tasks, manager, 4)
    finally:
        two.llm.close()
    for task in tasks:
        eval_checks.samples_match(want, got, task, TOL)
    eval_checks.metrics_match(want, got, tasks, rel=1e-4)


def test_helm_run_joins_the_cluster_and_predicts_what_one_process_does(two_nodes, tiny_llama_dir, tmp_path):
    pytest.importorskip("helm")
    entry = "synthetic_reasoning:mode=pattern_match,model=flexgen/tiny"
    runs = {"single": [], "two-nodes": ["--data-parallel", "2", "--ray-address", two_nodes.address]}
    for suite, extra in runs.items():
        helm_runs.run([os.path.join(BIN, "flexgen-eval"), "helm-config", "--model", tiny_llama_dir, "--name", "tiny",
              "--dtype", "float32", "--device", "cpu", "--out", f"prod_env_{suite}", *extra], tmp_path)
        log = helm_runs.run([os.path.join(BIN, "helm-run"), "--run-entries", entry, "--max-eval-instances", "40",
                    "--local-path", f"prod_env_{suite}", "-o", "out", "--suite", suite,
                    "--runner-class-name", "flexgen_eval.helm.runner.BatchingRunner"], tmp_path)
        if extra:
            assert "2 data-parallel workers on 2 node(s)" in log
    single = helm_runs.predictions(tmp_path / "out", "single")
    spread = helm_runs.predictions(tmp_path / "out", "two-nodes")
    assert len(single) == 40 and spread == single  # 40: two chunks of at least MIN_CHUNK_REQUESTS
