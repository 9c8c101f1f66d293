"""One module per claim; each defines ``CLAIM`` (a :class:`droplab.study.claim.Claim`). Found by the registry."""
