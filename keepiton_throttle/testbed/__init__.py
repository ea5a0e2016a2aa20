"""A censor emulator between network namespaces, for testing throttling detection end to end.

::

    client ns (10.77.0.1) --veth-- censor ns [userspace bridge: DPI + police/shape + delay/loss] --veth-- server ns (10.77.0.2)

* :mod:`.netns` creates and removes the namespaces and veth pairs (one /24 bridged through the
  censor; offloads off so the censor sees wire-sized frames).
* :mod:`.censor` is the censor: a sans-I/O core (:class:`~.censor.CensorCore`) and an AF_PACKET
  loop, run as a daemon in the censor namespace (``python -m keepiton_throttle.testbed.censor``).
* :mod:`.profiles` reads what the censor does from TOML; bundled profiles live in ``profiles/``
  (``clean``, ``lossy``, ``twitter-2021``, ``youtube-2024``, ``slow-link``).
* :mod:`.manager` brings a testbed up and down and records its state (pids, files) under
  ``/run/keepiton_throttle/<name>/``.
* :mod:`.client` holds the download clients (TLS over TCP with optional split ClientHello,
  HTTP/3 over QUIC) used by the tests and ``benchmarks/make_samples.py``.
* :mod:`.cli` exposes ``serve_command`` and ``testbed_group`` (``testbed up|down|status``).

Everything here needs root except :mod:`.profiles`, :mod:`.censor`'s core and :mod:`.client`.
Nothing here is imported by the analysis pipeline; the censor imports the pipeline's
:mod:`keepiton_throttle.protocols` parsers so that DPI and analysis read SNIs the same way.
"""
