"""The data path: router → intake → batcher → processor (dedupe → limiter → client →
reconciler → settle), with the send gate in front of the client and verification behind a
shortfall. ``lanes`` builds one finished pipeline per account (the composition root),
``runner`` owns every task and the two-phase shutdown, ``poller`` feeds the stream."""
