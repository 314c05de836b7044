"""A user-defined retraining hook, loaded by the CLI as ``custom_hooks:scaled_initial``."""

import os

import numpy as np


def scaled_initial(site):
    """Keep the initial weights, halved: a hook whose effect is easy to see.

    Appends the site's name to the file named by ``REBIRTH_HOOK_LOG``, so a test can see which
    sites it was called for.
    """
    log = os.environ.get("REBIRTH_HOOK_LOG")
    if log:
        with open(log, "a") as f:
            f.write(site.name + "\n")
    return site.init_weight * 0.5, np.asarray(site.init_bias) * 0.5
