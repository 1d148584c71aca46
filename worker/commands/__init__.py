"""The ``ackworker`` command line (``cli``) and one module per command: ``run``, ``poll``,
``enqueue``, ``health``, ``status``, ``dead``, ``reconcile``; ``common`` holds what the operator
commands share. Every command turns a bad setting into one line and exit code 2."""
