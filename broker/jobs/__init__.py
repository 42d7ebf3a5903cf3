"""Job rooms: sequencing and history of job events, fan-out to watchers (:mod:`.delivery`), and presence."""
