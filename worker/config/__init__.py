"""Configuration built at the edge of a process: the frozen, validated :class:`Settings`
(``settings``, with the value kinds in ``values``), accounts and their credentials, and the
Redis deployment the settings describe (``topology``). Only this layer reads the environment."""
