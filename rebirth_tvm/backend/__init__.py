"""Layer 4: targets and machines: the resolved target (:mod:`.targets`), building
(:mod:`.build`), tuning (:mod:`.tuning`), measuring (:mod:`.measure`), remote devices
(:mod:`.remote`) and the native runner (:mod:`.native`, :mod:`.runtime_libs`)."""
