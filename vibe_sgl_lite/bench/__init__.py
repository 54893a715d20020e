"""The benchmark harness behind ``vibe-sgl-lite bench``: offline throughput against
transformers (and llama.cpp), in the same run, on the same weights and the same requests.

Every engine gets one workload (nano-vllm's offline benchmark, sized for a CPU: random token
ids, lengths drawn from ``--seed``, greedy, EOS ignored) and is scored in *output tokens per
second*: the sum of the requests' ``max_tokens`` over the wall time of the whole batch. Tokens
an engine computes and throws away (a static batch running on for its longest request) count as
time, not output. Each column is timed after a small warm-up (first-call allocations, kernel
picks), and every baseline's outputs are compared with the reference's, token for token: the
check that the speed is not bought with wrong answers (greedy in fp32 on the same weights, they
should all be identical).

One concept a module, in the order a run uses them:

* ``shapes``: the model: a random-weight Qwen3 of a named shape (the one builder the
  repository's ``benchmarks/`` use too), or the user's folder or ``.gguf`` file;
* ``workload``: the requests (``BenchRequest``), seeded;
* ``transformers_baseline``: transformers' ``generate`` in static batches (the reference) and
  its continuous batching engine;
* ``llama_cpp``: llama.cpp through ``llama-cpp-python``, continuously batched as
  ``llama-server`` runs it;
* ``report``: the results as data (``Column``, ``BenchResult``), the printed report, and the
  CPU's bf16 detection;
* ``harness``: our engine's column, and ``run_bench``/``measure_throughput``, which run them
  all, one model in memory at a time.

The flags are the CLI's (``cli/bench.py``), which imports this package only when the command
runs, so ``vibe-sgl-lite --help`` does not load torch. The harness lives in the package, not in
the repository's ``benchmarks/`` folder, so an installed ``vibe-sgl-lite`` can measure itself;
``benchmarks/throughput.py`` is the command under its old name.
"""
