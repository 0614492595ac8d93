"""Internal: many enclaves as one service. Attested key release between enclaves (:mod:`.keyrelease`)
and the folder of sealed model files they share, one per version (:mod:`.storage`); both trusted,
both used by the enclave (``enclave/server.py`` joins, ``enclave/models.py`` seals and reloads), and
:mod:`.storage`'s file names also by the hosts that watch the folder. Nothing here depends on Ray:
any engine that can carry bytes between hosts can carry it."""
