"""Layer 2: relearning: retraining hooks (:mod:`.hooks`), calibration inputs
(:mod:`.calibration`), the one driver every relearned rewrite fits its weights with
(:mod:`.driver`) and labelled fine-tuning (:mod:`.finetune`).

The passes (layer 3, ``rebirth_tvm.passes``) use this layer; it never uses them.
"""
