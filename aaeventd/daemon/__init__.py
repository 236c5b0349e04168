"""The daemon: everything ``aaeventd run`` executes.

:mod:`~aaeventd.daemon.app` is the composition root (it builds the rest from a
:class:`~aaeventd.config.Config` and is the one place that executes the hub's effect
records); :mod:`~aaeventd.daemon.hub` is the pure state; :mod:`~aaeventd.daemon.ingest`
(sources' Unix socket), :mod:`~aaeventd.daemon.wsserver` and :mod:`~aaeventd.daemon.web`
(the WebSocket/HTTP port), :mod:`~aaeventd.daemon.journal`, :mod:`~aaeventd.daemon.replay`,
:mod:`~aaeventd.daemon.notify`, :mod:`~aaeventd.daemon.logsetup` and the rest are the
I/O around it; ``static/`` is the web UI the daemon serves.

Nothing here imports from :mod:`aaeventd.cli` or from the public libraries
(:mod:`aaeventd.client`, :mod:`aaeventd.subscriber`).  Loggers keep the names users
filter on (``aaeventd.app``, ``aaeventd.ingest``, ``aaeventd.journal``, ...), not the
module paths.
"""
