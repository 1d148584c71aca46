"""``make bench``: ackworker measured side by side with what users would otherwise run.

One module per scenario family; :mod:`bench.run` is the command line. Every scenario starts
its own ``redis-server`` and ``ackworker mock-api`` on loopback and stops them on the way out.
"""
