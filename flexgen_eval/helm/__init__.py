"""HELM adapter: a CachingClient over the flexgen runtime, a batching runner, and registration.

`helm-run` imports this package at start-up through the `helm` entry point, so it must stay
cheap: nothing here imports torch or the runtime until a client is built.

    client.FlexGenClient        the deployment's `client_spec.class_name`
    runner.BatchingRunner       for `helm-run --runner-class-name`
    deployment                  prod_env YAML for `flexgen-eval helm-config`
    offline_data                puts FLEXGEN_DATA_DIR files where HELM's scenarios look
"""
