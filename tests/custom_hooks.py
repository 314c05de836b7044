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


# Broken hooks, as users write them by mistake: each must end as one `error:` line naming it.
def raises(site):
    raise RuntimeError("my hook broke")


def returns_none(site):
    return None


def wrong_shapes(site):
    return site.init_weight[:1], site.init_bias


def nan_weights(site):
    weight = np.array(site.init_weight, np.float64)
    weight.flat[0] = np.nan
    return weight, site.init_bias


def slow(site):
    """Touch the file named by ``REBIRTH_HOOK_READY``, then take a long time: a test interrupts
    the run while it is relearning."""
    import time

    with open(os.environ["REBIRTH_HOOK_READY"], "a") as f:
        f.write(site.name + "\n")
    time.sleep(60)
    return site.init_weight, site.init_bias
