"""Layer 0: what every other layer may use, and which uses nothing of ours.

Errors (:mod:`.errors`), Relax graph helpers (:mod:`.graph`), conv arithmetic (:mod:`.conv_math`),
output comparisons (:mod:`.compare`) and the exact-check tolerance (:mod:`.tolerance`).
"""
