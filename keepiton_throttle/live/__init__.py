"""The live check: measure targets and controls from this machine, capture, analyse, report.

::

    measure.py (downloads: TLS/TCP, HTTP/3; TCP_INFO samples)  --+
    capture.py (AF_PACKET ring + BPF -> pcapng, drop counts)   --+--> run.py --> analysis.analyze_paths
                                                                    |             (or TCP_INFO evidence)
                                                                    +--> report JSON (keepiton_throttle.run/1)
                                                                         ooni.py, plots.py, html.py

* :mod:`.capture` is the only module of the package that imports Scapy (for the BPF compiler
  and interface routes); its hot path reads the kernel's TPACKET_V3 ring without dissecting
  packets and writes pcapng records directly.
* :mod:`.measure` holds the download clients; every failure is a result, never an exception.
* :mod:`.run` orders the measurements (controls first, targets and controls interleaved),
  runs the capture around them and turns everything into the versioned report.
* :mod:`.cli` exposes ``run_command`` and ``report_command`` for the main ``throttle-check``
  group; heavy modules (Scapy, aioquic, matplotlib, NumPy) are imported inside the commands.
"""
