"""Reading and checking the configuration: config.toml and BROKER_* variables into frozen sections (:mod:`.sections`), checked by :mod:`.loader`."""
