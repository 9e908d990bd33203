"""Fault-injection harness: nats-server processes, a TCP proxy, consumer subprocesses, history.

Every process and socket here lives on 127.0.0.1; everything started is stopped by its own
handle (never by name) and reaped.
"""
