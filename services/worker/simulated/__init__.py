"""The simulated engine: llama-server's behaviour without llama-server (WORKER_ENGINE=simulated).

No process and no blob download. Loads take WORKER_SIM_LOAD_TIME; each runner has `parallel`
slots generating at WORKER_SIM_TOKENS_PER_SECOND each, more requests wait in order; each slot
keeps the last prompt it processed, and the prefix a new request shares with it costs nothing
(prompt processing runs at WORKER_SIM_PROMPT_TOKENS_PER_SECOND). Answers are OpenAI-shaped and
deterministic, with llama-server's `timings`, so a scheduler and its benchmarks cannot tell a
simulated worker from a real one except by speed and `system_fingerprint`.
"""

__all__: list[str] = []
