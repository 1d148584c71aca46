"""ackworker: acknowledges Alibaba Cloud Domain API task results from a Redis stream."""

__version__ = "0.1.0"
