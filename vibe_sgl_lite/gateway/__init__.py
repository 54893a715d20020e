"""Beyond one process: engine replicas behind SGLang's model gateway (``smg``).

    data_parallel.py    ``serve --dp-size N``: N ``serve`` replicas and the gateway on one port;
                        ``router --worker-urls``: the gateway in front of workers on other hosts
    supervisor.py       the child processes: started, watched, stopped together

This package launches processes and never imports the server or the engine: the replicas are
ordinary ``vibe-sgl-lite serve`` commands, so ``--help`` and the flag checks stay instant.
"""
