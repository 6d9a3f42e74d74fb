"""Reconciling the fleet: make every node hold exactly what the manifest places on it.

- `inventory`: what each node holds and has loaded (asked over Ollama's API);
- `placement`: which nodes each model goes to (`place.replicas`, deterministic);
- `actions`: the per-node plan (pull, prune, warm) and its checks (bundles);
- `nodeapi`: the Ollama calls that carry a plan out (pull, copy, delete, warm);
- `executor`: runs the plan on nodes in parallel and reports every step;
- `progress`: shows those reports on a terminal, as lines, or as JSON.
"""
