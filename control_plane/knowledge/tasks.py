"""Knowledge bases have no background work, on purpose: a task message would put the
documents' bytes in the broker (Redis may persist it to disk). Loading runs in the
request that carries the bytes; the rollout it queues is the fleet's task."""
