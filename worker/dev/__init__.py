"""Development only, never loaded by ``ackworker run``: the demo (``make demo``), the closed
loop, throwaway redis-server and child processes (``sandbox``), and the Domain API stand-in
(``mockapi``, served by ``ackworker mock-api``)."""
