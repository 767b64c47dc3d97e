"""Keras glue below the callback: one `fit`'s session, the hooks that hear every
way out of it, its progress, the resume decision, the data position and the
training state exact resumption needs."""
