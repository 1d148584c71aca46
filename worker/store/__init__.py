"""Everything ackworker keeps in Redis, each concept in one module: key names (``keys``), the
client (``connection``), reading and claiming the stream (``source``), dedupe memory and
in-flight leases (``dedupe``), renewing held entries (``leases``), the fleet's rate limit
(``limiter``), writing outcomes (``settle``), heartbeats and enqueueing. Multi-step changes are
single Lua scripts. Knows nothing of settings: callers pass plain values."""
