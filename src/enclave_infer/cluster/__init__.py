"""Internal: many enclaves as one service. Attested key release between enclaves
(:mod:`.keyrelease`, pure logic, trusted) and the sealed model files they share (:mod:`.storage`).
Nothing here depends on Ray: any engine that can carry bytes between hosts can carry it."""
