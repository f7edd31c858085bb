"""The sending pipeline: outbox row -> claim -> render and compose -> SMTP -> send log.

`tick` queues what is due and runs `delivery`; `worker` repeats ticks on a timer.
"""
